"""Syntax of names, label keys and label values (Kubernetes' rules).

Each check returns a list of human-readable problems; empty means valid. The
callers attach field paths.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63
CONFIG_KEY_MAX = 253

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def dns1123_label(value: str) -> list[str]:
    """Problems with value as a DNS-1123 label (namespaces, process names)."""
    problems = []
    if len(value) > DNS1123_LABEL_MAX:
        problems.append(f"must be no more than {DNS1123_LABEL_MAX} characters")
    if not _DNS1123_LABEL.fullmatch(value):
        problems.append(
            "a DNS-1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character"
        )
    return problems


def dns1123_subdomain(value: str) -> list[str]:
    """Problems with value as a DNS-1123 subdomain (most object names)."""
    problems = []
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        problems.append(f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            "a DNS-1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character"
        )
    return problems


def qualified_name(value: str) -> list[str]:
    """Problems with value as a label or annotation key: ``[prefix/]name``.

    The optional prefix is a DNS-1123 subdomain; the name is at most 63
    alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
    """
    if value.count("/") > 1:
        return ["a qualified name may contain at most one '/'"]
    prefix, sep, name = value.rpartition("/")
    problems = []
    if sep:
        if not prefix:
            problems.append("prefix part must be non-empty")
        else:
            problems.extend(f"prefix part: {p}" for p in dns1123_subdomain(prefix))
    if not name:
        problems.append("name part must be non-empty")
        return problems
    if len(name) > QUALIFIED_NAME_MAX:
        problems.append(f"name part must be no more than {QUALIFIED_NAME_MAX} characters")
    if not _QUALIFIED_NAME.fullmatch(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return problems


def label_value(value: str) -> list[str]:
    """Problems with value as a label value (empty is allowed)."""
    problems = []
    if len(value) > LABEL_VALUE_MAX:
        problems.append(f"must be no more than {LABEL_VALUE_MAX} characters")
    if value and not _QUALIFIED_NAME.fullmatch(value):
        problems.append(
            "a label value must be empty or consist of alphanumeric characters, '-', '_' "
            "or '.', and must start and end with an alphanumeric character"
        )
    return problems


def config_key(value: str) -> list[str]:
    """Problems with value as a key of a ConfigMap or Secret (Kubernetes' IsConfigMapKey).

    A key becomes a file name in a volume, so '.', '..' and names starting
    with '..' (the kubelet's own entries) are refused.
    """
    problems = []
    if len(value) > CONFIG_KEY_MAX:
        problems.append(f"must be no more than {CONFIG_KEY_MAX} characters")
    if not _CONFIG_KEY.fullmatch(value):
        problems.append(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        )
    if value in (".", ".."):
        problems.append("must not be '.' or '..'")
    elif value.startswith(".."):
        problems.append("must not start with '..'")
    return problems
