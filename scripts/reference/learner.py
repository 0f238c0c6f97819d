"""Learner fixtures: the SELM loss (and IPO / hinge variants) written in PyTorch on the tiny random
checkpoints, with a reference policy different from the policy, its value, metrics and the gradient
of every parameter from autograd; torch.optim.AdamW steps (one tensor; and every parameter of a small
Llama in the transformers Trainer's param groups, where weight decay matters); a short full training
run. One case alone: `python -c "import pathlib, sys; sys.path.insert(0, 'scripts'); from reference
import learner; learner.adamw_groups_case(pathlib.Path('.'))"` from the repository root."""
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

FIX = pathlib.Path("Tests") / "LearnerTests" / "Fixtures"


def seq_logps(model, prompt, response):
    """Sum of log p over the response tokens only (the prompt conditions, it is not scored)."""
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    P = len(prompt)
    rows = logp[P - 1: P - 1 + len(response)]
    return rows.gather(1, torch.tensor(response)[:, None]).sum()


def pair_loss(policy, ref, pairs, loss_type, beta, alpha):
    """Mean over pairs of the SELM loss and its metrics (TRL / SELM names)."""
    losses, rc, rr, lc, lr, ly, lyr = [], [], [], [], [], [], []
    for p in pairs:
        c = seq_logps(policy, p["prompt_ids"], p["chosen_ids"])
        r = seq_logps(policy, p["prompt_ids"], p["rejected_ids"])
        with torch.no_grad():
            c0 = seq_logps(ref, p["prompt_ids"], p["chosen_ids"])
            r0 = seq_logps(ref, p["prompt_ids"], p["rejected_ids"])
        z = (c - r) - (c0 - r0)
        if loss_type == "sigmoid":
            l = -F.logsigmoid(beta * z)
        elif loss_type == "ipo":
            l = (z - 1 / (2 * beta)) ** 2
        else:
            l = torch.relu(1 - beta * z)
        if p.get("reference_ids"):
            y = seq_logps(policy, p["prompt_ids"], p["reference_ids"])
            with torch.no_grad():
                y0 = seq_logps(ref, p["prompt_ids"], p["reference_ids"])
            l = l + alpha * beta * (y - y0)
            ly.append(y.item()); lyr.append(y0.item())
        w = p.get("weight", 1.0)
        losses.append(w * l)
        rc.append(beta * (c - c0).item()); rr.append(beta * (r - r0).item())
        lc.append(c.item()); lr.append(r.item())
    loss = torch.stack(losses).mean()
    n = len(pairs)
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": sum(rc) / n, "rewards/rejected": sum(rr) / n,
        "rewards/accuracies": sum(1.0 for a, b in zip(rc, rr) if a > b) / n,
        "rewards/margins": (sum(rc) - sum(rr)) / n,
        "logps/chosen": sum(lc) / n, "logps/rejected": sum(lr) / n,
        "logps/pi_response": sum(ly) / len(ly), "logps/ref_response": sum(lyr) / len(lyr),
    }
    return loss, metrics


def make_pairs(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()
    pairs = []
    for i, (P, C, R, Y) in enumerate([(5, 7, 4, 6), (3, 2, 9, 0), (11, 5, 5, 3), (1, 8, 1, 4)]):
        p = {"prompt_ids": ids(P), "chosen_ids": ids(C), "rejected_ids": ids(R)}
        if Y:
            p["reference_ids"] = ids(Y)
        if i == 2:
            p["weight"] = 0.5
        pairs.append(p)
    return pairs


def perturbed(model, seed, scale=0.05):
    ref = LlamaForCausalLM(model.config).eval()
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    if model.config.tie_word_embeddings:
        ref.tie_weights()
    return ref


def grads_case(root, name, model_dir, loss_type, beta, alpha, seed):
    policy = LlamaForCausalLM.from_pretrained(root / model_dir, dtype=torch.float32).eval()
    ref = perturbed(policy, seed)
    ref_dir = root / FIX / f"{name}-ref"
    ref_dir.mkdir(parents=True, exist_ok=True)
    ref.save_pretrained(ref_dir)
    pairs = make_pairs(policy.config.vocab_size, seed)
    loss, metrics = pair_loss(policy, ref, pairs, loss_type, beta, alpha)
    loss.backward()
    grads = {}
    for n, p in policy.named_parameters():
        if p.grad is not None:
            grads[n] = p.grad.detach().clone().contiguous()
    save_file(grads, str(root / FIX / f"{name}.grads.safetensors"))
    case = {"model": model_dir, "ref": f"{name}-ref", "loss_type": loss_type, "beta": beta, "alpha": alpha,
            "pairs": pairs, "metrics": metrics}
    (root / FIX / f"{name}.json").write_text(json.dumps(case, indent=1))
    print(name, metrics["loss"], sorted(grads)[:2], len(grads))


class _BF16OperandsLinear(torch.autograd.Function):
    """The learner's `--precision bf16` products written in PyTorch for the study in bf16_case: both
    operands rounded to bfloat16 (nearest even), f32 accumulation and f32 output, in the forward
    product and in the backward's two (input and weight gradient); `round_output` also rounds the
    forward's output to bfloat16 as autocast does."""
    @staticmethod
    def forward(ctx, x, w, round_output):
        xb, wb = x.bfloat16().float(), w.bfloat16().float()
        ctx.save_for_backward(xb, wb)
        y = xb @ wb.T
        return y.bfloat16().float() if round_output else y

    @staticmethod
    def backward(ctx, g):
        xb, wb = ctx.saved_tensors
        gb = g.bfloat16().float()
        return gb @ wb, gb.reshape(-1, gb.shape[-1]).T @ xb.reshape(-1, xb.shape[-1]), None


def _bf16_operands(round_output=False):
    import contextlib

    @contextlib.contextmanager
    def patched():
        orig = torch.nn.Linear.forward
        torch.nn.Linear.forward = lambda self, x: _BF16OperandsLinear.apply(x, self.weight, round_output)
        try:
            yield
        finally:
            torch.nn.Linear.forward = orig
    return patched()


def _run_case(root, case, mode):
    """Loss, gradients (float64, flattened) and every sequence log-prob sum (policy then reference;
    per pair chosen, rejected, reference response) of an f32 SELM case in `mode`: f64 (the models in
    float64: the reference every other mode is measured against), f32, autocast (CPU bfloat16),
    operands (this learner's bf16 mode, emulated) or operands+out (that and autocast's rounding of
    each linear layer's output)."""
    import contextlib
    dt = torch.float64 if mode == "f64" else torch.float32
    policy = LlamaForCausalLM.from_pretrained(root / case["model"], dtype=dt).eval()
    ref = LlamaForCausalLM.from_pretrained(root / FIX / case["ref"], dtype=dt).eval()
    ctx = {"autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16), "operands": lambda: _bf16_operands(False),
           "operands+out": lambda: _bf16_operands(True)}.get(mode, contextlib.nullcontext)
    with ctx():
        loss, metrics = pair_loss(policy, ref, case["pairs"], case["loss_type"], case["beta"], case["alpha"])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in policy.named_parameters() if p.grad is not None}
    logps = []
    with torch.no_grad(), ctx():
        for m in (policy, ref):
            for p in case["pairs"]:
                for k in ("chosen_ids", "rejected_ids", "reference_ids"):
                    if p.get(k):
                        logps.append(seq_logps(m, p["prompt_ids"], p[k]).item())
    return loss.item(), metrics, grads, logps


def _accuracy(grads, logps, ref_grads, ref_logps):
    """Per tensor: cosine similarity and relative L2 error against the reference gradients; all
    parameters together: relative L2 error; the sequence log-prob sums: RMS and largest error."""
    def cos(a, b):
        return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()
    names = sorted(ref_grads)
    allg = torch.cat([grads[n].double().flatten() for n in names])
    allr = torch.cat([ref_grads[n].double().flatten() for n in names])
    d = torch.tensor(logps, dtype=torch.float64) - torch.tensor(ref_logps, dtype=torch.float64)
    return {"cosine": {n: cos(grads[n], ref_grads[n]) for n in names},
            "rel_err": {n: rel(grads[n], ref_grads[n]) for n in names},
            "rel_err_all": ((allg - allr).norm() / allr.norm()).item(),
            "logps_rms_err": d.pow(2).mean().sqrt().item(), "logps_max_err": d.abs().max().item()}


def bf16_case(root, name):
    """The f32 case `name` (its policy, reference, pairs and loss, written by grads_case) under PyTorch
    CPU autocast to bfloat16: the mixed precision every trainer runs (linear layers and attention in
    bfloat16 with bfloat16 outputs; parameters, gradients and the loss f32). Writes
    NAME.bf16.grads.safetensors (autocast's gradients) and NAME.bf16.json: autocast's loss and
    metrics, every sequence's log-prob sum, and how far autocast is from the same case computed in
    float64 (per tensor cosine and relative L2 error, all parameters, log-prob sums), the reference
    the learner's `--precision bf16` is measured against too (README "Learner precision": agree with
    autocast, and be at least as accurate). The f32 gradients of NAME.grads.safetensors stand in for
    the float64 ones in the Swift test; `f32_vs_f64` records that they may (their worst cosine and
    relative error to float64).

    It also prints where the gap between the learner's bf16 mode and autocast comes from: per tensor,
    the cosines of an emulation of the bf16 mode (bf16 operands, f32 accumulation and outputs), of
    that emulation with autocast's rounding of the linear layers' outputs added, and of autocast,
    each against float64 and against autocast."""
    case = json.loads((root / FIX / f"{name}.json").read_text())
    loss, metrics, grads, logps = _run_case(root, case, "autocast")
    save_file({n: g.float().contiguous() for n, g in grads.items()}, str(root / FIX / f"{name}.bf16.grads.safetensors"))
    f64_loss, _, f64_grads, f64_logps = _run_case(root, case, "f64")
    f32 = safe_open_grads(root / FIX / f"{name}.grads.safetensors")
    f32_acc = _accuracy(f32, f64_logps, f64_grads, f64_logps)
    auto = _accuracy(grads, logps, f64_grads, f64_logps)
    out = {"case": name, "autocast": "cpu bfloat16", "loss": metrics["loss"], "f32_loss": case["metrics"]["loss"],
           "f64_loss": f64_loss, "metrics": metrics, "logps": logps, "f64_logps": f64_logps,
           "min_cosine_to_f32": min(F.cosine_similarity(grads[n].flatten(), f32[n].flatten(), dim=0).item() for n in f32),
           "autocast_vs_f64": auto,
           "f32_vs_f64": {"min_cosine": min(f32_acc["cosine"].values()), "max_rel_err": max(f32_acc["rel_err"].values())}}
    (root / FIX / f"{name}.bf16.json").write_text(json.dumps(out, indent=1))
    print(f"{name}.bf16: loss {metrics['loss']:.5f} (f64 {f64_loss:.5f}, f32 {case['metrics']['loss']:.5f}); autocast vs f64: "
          f"gradients rel. err. {auto['rel_err_all']:.4f}, log-prob sums RMS err. {auto['logps_rms_err']:.4f}; "
          f"f32 vs f64: worst cosine 1 - {1 - out['f32_vs_f64']['min_cosine']:.1e}, rel. err. {out['f32_vs_f64']['max_rel_err']:.1e}")
    # Where the gap to autocast comes from (printed, not a fixture).
    study = {m: _run_case(root, case, m) for m in ("operands", "operands+out")}
    acc = {m: _accuracy(r[2], r[3], f64_grads, f64_logps) for m, r in study.items()}
    vs_auto = {m: _accuracy(r[2], r[3], grads, logps) for m, r in study.items()}
    print(f"  {'tensor':46s} cosine to f64: operands  +out      autocast | to autocast: operands  +out")
    for n in sorted(f64_grads):
        print(f"  {n:46s} {acc['operands']['cosine'][n]:.6f}  {acc['operands+out']['cosine'][n]:.6f}  "
              f"{auto['cosine'][n]:.6f} | {vs_auto['operands']['cosine'][n]:.6f}  {vs_auto['operands+out']['cosine'][n]:.6f}")
    for m in ("operands", "operands+out"):
        print(f"  {m}: loss {study[m][0]:.5f}; vs f64: gradients rel. err. {acc[m]['rel_err_all']:.4f}, "
              f"log-prob sums RMS err. {acc[m]['logps_rms_err']:.4f}; worst cosine to autocast "
              f"{min(vs_auto[m]['cosine'].values()):.6f}")


def safe_open_grads(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def adamw_case(root):
    """Three torch.optim.AdamW steps on fixed random parameters and gradients."""
    g = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(torch.randn(257, generator=g))
    p0 = p.detach().clone()
    grads = [torch.randn(257, generator=g) * s for s in (1.0, 0.1, 3.0)]
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for gr in grads:
        p.grad = gr.clone()
        opt.step()
    out = {"initial": p0.tolist(), "grads": [x.tolist() for x in grads], "lr": 1e-2, "weight_decay": 0.1,
           "final": p.detach().tolist()}
    (root / FIX / "adamw.json").write_text(json.dumps(out))


def adamw_groups_case(root):
    """Three torch.optim.AdamW steps over every parameter of a small Llama, with the param groups the
    transformers Trainer builds (`Trainer.get_decay_parameter_names`: weight decay on everything but
    the RMSNorm weights) and a weight decay that matters: over the three steps decay moves each decayed
    weight by ~3·lr·wd = 3e-3 of its size, norm weights sit near 1 so decaying them would show as much.
    Also written: the same run without decay and with decay on every parameter, so the test can show
    its tolerance is far below what either mistake changes. Writes adamw-groups.json."""
    from transformers import LlamaConfig, Trainer
    shape = {"vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 4, "max_position_embeddings": 32, "rms_norm_eps": 1e-5,
             "tie_word_embeddings": False}
    model = LlamaForCausalLM(LlamaConfig(**shape)).float()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = [{n: torch.randn(p.shape, generator=g) * s for n, p in model.named_parameters()} for s in (1.0, 0.1, 3.0)]
    decay_names = Trainer.get_decay_parameter_names(None, model)  # (self is not used)
    lr, wd = 1e-2, 0.1

    def run(decayed):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(initial[n])
        groups = [{"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": wd},
                  {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        for step in grads:
            for n, p in model.named_parameters():
                p.grad = step[n].clone()
            opt.step()
        return {n: p.detach().flatten().tolist() for n, p in model.named_parameters()}

    names = [n for n, _ in model.named_parameters()]
    out = {
        "config": shape,
        "lr": lr, "weight_decay": wd, "decay_parameters": sorted(decay_names),
        "initial": {n: initial[n].flatten().tolist() for n in names},
        "grads": [{n: step[n].flatten().tolist() for n in names} for step in grads],
        "final": run(set(decay_names)),
        "final_without_decay": run(set()),
        "final_decaying_everything": run(set(names)),
    }
    (root / FIX / "adamw-groups.json").write_text(json.dumps(out))
    print("adamw-groups", len(names), "tensors,", len(decay_names), "decayed; not decayed:",
          sorted(set(names) - set(decay_names)))


def training_case(root):
    """Three full optimizer steps as the transformers Trainer would take them: SELM loss, gradient
    accumulation over 2 micro-batches, global-norm clipping, AdamW with weight decay skipping norm
    weights, linear warm-up then cosine (get_cosine_schedule_with_warmup)."""
    policy = LlamaForCausalLM.from_pretrained(root / "Tests/ModelTests/Fixtures/tiny-untied", dtype=torch.float32).eval()
    ref = LlamaForCausalLM.from_pretrained(root / FIX / "selm-untied-ref", dtype=torch.float32).eval()
    pairs = make_pairs(policy.config.vocab_size, 11)
    beta, alpha, lr, wd, max_norm, total, warmup = 0.5, 0.1, 3e-3, 0.05, 0.5, 3, 1
    decay = [p for n, p in policy.named_parameters() if not n.endswith("norm.weight")]
    no_decay = [p for n, p in policy.named_parameters() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)

    def factor(step):
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    log = []
    for step in range(total):
        opt.zero_grad()
        ms = []
        for mb in (pairs[:2], pairs[2:]):
            loss, m = pair_loss(policy, ref, mb, "sigmoid", beta, alpha)
            (loss / 2).backward()
            ms.append(m)
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
        lr_now = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        log.append({"loss": (ms[0]["loss"] + ms[1]["loss"]) / 2, "grad_norm": norm.item(), "learning_rate": lr_now})
    state = {n: p.detach().clone().contiguous() for n, p in policy.named_parameters()}
    save_file(state, str(root / FIX / "train3.weights.safetensors"))
    out = {"pairs": pairs, "beta": beta, "alpha": alpha, "lr": lr, "weight_decay": wd, "max_grad_norm": max_norm,
           "total_steps": total, "warmup_steps": warmup, "micro_batches": [[0, 1], [2, 3]], "log": log}
    (root / FIX / "train3.json").write_text(json.dumps(out, indent=1))
    print("train3", log)


def main(root: pathlib.Path):
    (root / FIX).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    grads_case(root, "selm-tied", "Tests/ModelTests/Fixtures/tiny-tied", "sigmoid", 0.5, 0.1, 21)
    grads_case(root, "selm-untied", "Tests/ModelTests/Fixtures/tiny-untied", "sigmoid", 0.5, 0.1, 22)
    grads_case(root, "ipo-untied", "Tests/ModelTests/Fixtures/tiny-untied", "ipo", 0.5, 0.1, 23)
    grads_case(root, "hinge-tied", "Tests/ModelTests/Fixtures/tiny-tied", "hinge", 0.05, 0.1, 24)
    bf16_case(root, "selm-tied")
    bf16_case(root, "selm-untied")
    adamw_case(root)
    adamw_groups_case(root)
    training_case(root)


if __name__ == "__main__":
    main(pathlib.Path(__file__).resolve().parents[2])
