/// The version of selm-server: what `selm --version` prints and what HelloReply.server_version
/// reports ("selm-server " + this). Defined here only; bump it with each release.
public enum SelmVersion {
    public static let string = "0.1.0"
}
