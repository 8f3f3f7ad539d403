"""CLI errors: each becomes readable text on stderr after "mizzen: " and exit code 1."""


class UsageError(Exception):
    """Bad flags or arguments."""


class CommandError(Exception):
    """The command failed (not found, invalid, store unreachable, ...); the text says why."""


def tls_hint(err: BaseException) -> str:
    """A hint when a connection failed in a way a TLS mismatch (or no store at all) explains."""
    text = str(err)
    if "nothing is listening at" in text:
        return "; is the store running there? (`mizzen up` starts one)"
    if "WRONG_VERSION_NUMBER" in text:
        return "; the store does not serve TLS there: connect without --cacert/--cert/--key"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "; the store's certificate does not verify against --cacert "
            "(another CA, or it does not name this address)"
        )
    if "Socket closed" in text:
        return (
            "; the store closed the connection in the TLS handshake: it wants a client "
            "certificate signed by its CA (--cacert with --cert/--key, or a config file; "
            "see mizzen pki), or a plaintext client met a TLS port"
        )
    if "not connected" in text or "failed to connect" in text:
        return (
            "; if the store serves TLS, check --cacert and that --cert/--key are "
            "signed by the store's CA (see mizzen pki)"
        )
    return ""
