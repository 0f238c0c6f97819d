import Model
print("selm")
