"""Kubernetes' own rules for names and values the API server checks when the operator creates a Job.

Pure functions, no client library: the webhook, ``quantjob validate`` and the create handler use
them so that a QuantJob is refused at admission, with its field, instead of being admitted and
then failing when its Job is created. Each function returns an error message (what is wrong and
what the rule is) or None. The rules follow k8s.io/apimachinery's validation helpers
(``IsDNS1123Label``, ``IsQualifiedName``, ``IsValidLabelValue``, ``IsEnvVarName``) and resource
quantities (``resource.ParseQuantity``); image references follow the container image reference
grammar (the one container runtimes parse).
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63
IMAGE_NAME_MAX = 255
MAX_GROUP_ID = 2_147_483_647
ANNOTATIONS_MAX_BYTES = 256 * 1024  # TotalAnnotationSizeLimitB: keys and values of one object together
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)
# A quantity's value, in its base unit, is held in an int64 (resource.Quantity caps larger values, so
# what a pod would get is not what was written): larger values are refused here.
MAX_QUANTITY = Decimal(INT64_MAX)
_MAX_EXPONENT = 40  # far beyond MAX_QUANTITY and below 1n: decides before any arithmetic

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")

# resource.Quantity: <signed number><suffix>, suffix binary (Ki..Ei), decimal (n..E) or an exponent.
_QUANTITY = re.compile(r"(?P<number>[+-]?(\d+(\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal("1e3"),
            "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"),
            "E": Decimal("1e18")}

# Container image references: [domain[:port]/]path[:tag][@digest].
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)(?::{_TAG})?(?:@{_DIGEST})?")

STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def dns1123_label(value: str) -> str | None:
    if len(value) > DNS1123_LABEL_MAX or not _DNS1123_LABEL.fullmatch(value):
        return (f"{value!r} is not a DNS-1123 label: at most {DNS1123_LABEL_MAX} lowercase letters, digits "
                "and '-', starting and ending with a letter or digit")
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > DNS1123_SUBDOMAIN_MAX or not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (f"{value!r} is not a DNS-1123 subdomain: at most {DNS1123_SUBDOMAIN_MAX} lowercase letters, "
                "digits, '-' and '.', starting and ending with a letter or digit")
    return None


def qualified_name(value: str) -> str | None:
    """A label or annotation key, or a resource name: ``[prefix/]name`` (prefix a DNS subdomain)."""
    prefix, slash, name = value.rpartition("/")
    if slash and (not prefix or dns1123_subdomain(prefix)):
        return f"{value!r} has a bad prefix {prefix!r}: the part before '/' must be a DNS subdomain (e.g. example.com)"
    if len(name) > QUALIFIED_NAME_MAX or not _QUALIFIED_NAME.fullmatch(name):
        return (f"{value!r} is not a qualified name: the name part must be at most {QUALIFIED_NAME_MAX} "
                "letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    return None


def label_value(value: str) -> str | None:
    if value and (len(value) > LABEL_VALUE_MAX or not _QUALIFIED_NAME.fullmatch(value)):
        return (f"{value!r} is not a valid label value: at most {LABEL_VALUE_MAX} letters, digits, '-', '_' or "
                "'.', starting and ending with a letter or digit (or empty)")
    return None


def env_name(value: str) -> str | None:
    if not _ENV_NAME.fullmatch(value):
        return (f"{value!r} is not a valid environment variable name: letters, digits, '_', '-' and '.', "
                "not starting with a digit")
    return None


def _quantity_value(value: str) -> Decimal | str:
    """The quantity's value, or why ``value`` is not a quantity a pod can be given. Never raises."""
    match = _QUANTITY.fullmatch(value) if len(value) <= 100 else None
    if match is None:
        return (f"{value[:40]!r} is not a Kubernetes quantity; write a number with an optional suffix, "
                "e.g. 4, 500m, 64Gi, 1e3")
    suffix = match["suffix"] or ""
    out_of_range = (f"{value!r} is out of range: a quantity is at most {INT64_MAX} in its base unit "
                    "(and not below 1n); write a smaller value")
    try:
        number = Decimal(match["number"])
        if suffix not in _BINARY and suffix not in _DECIMAL:  # an exponent: e3, E-2
            exponent = int(suffix[1:])
            if number and abs(number.adjusted() + exponent) > _MAX_EXPONENT:
                return out_of_range
            amount = number.scaleb(exponent)
        else:
            amount = number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])
    except (DecimalException, ValueError, OverflowError):
        return out_of_range
    if abs(amount) > MAX_QUANTITY:
        return out_of_range
    return amount


def parse_quantity(value: str) -> Decimal | None:
    """The quantity's value, or None when ``value`` is not a Kubernetes quantity or out of range."""
    found = _quantity_value(value)
    return found if isinstance(found, Decimal) else None


def quantity(value: str) -> str | None:
    """Why ``value`` is not a quantity (malformed, or out of range), or None."""
    found = _quantity_value(value)
    return found if isinstance(found, str) else None


def resource_name(value: str) -> str | None:
    """A key of ``resources.requests``/``limits``: a standard resource, ``hugepages-<size>`` or
    ``<domain>/<name>`` (an extended resource such as ``huawei.com/Ascend910``)."""
    if value in STANDARD_RESOURCES:
        return None
    if value.startswith("hugepages-"):
        return None if quantity(value[len("hugepages-"):]) is None else \
            f"{value!r}: a hugepages resource is hugepages-<size>, e.g. hugepages-2Mi"
    if "/" not in value:
        return (f"unknown resource {value!r}; use {', '.join(STANDARD_RESOURCES)}, hugepages-<size>, or an "
                "extended resource with its domain (e.g. huawei.com/Ascend910)")
    return qualified_name(value)


def extended_resource_name(value: str) -> str | None:
    """``devices.resourceName``: an extended resource as the API server accepts one in limits,
    ``<domain>/<name>`` with a domain outside ``kubernetes.io`` (``memory`` or ``cpu`` here would
    replace the pod's own request)."""
    if "/" not in value or not is_extended_resource(value) or value.startswith("requests."):
        return (f"{value[:80]!r} is not an extended resource name: write <domain>/<name> with a domain of your "
                "device plugin, e.g. huawei.com/Ascend910 or nvidia.com/gpu (not cpu, memory or a kubernetes.io "
                "name)")
    return qualified_name(value)


def int64(value: int) -> str | None:
    if not INT64_MIN <= value <= INT64_MAX:
        return f"{value} is outside the 64-bit range the API server stores"
    return None


def is_extended_resource(name: str) -> bool:
    """Extended resources are counted in whole units, and their request must equal their limit."""
    if "/" not in name:
        return False
    domain = name.split("/", 1)[0]
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


def image_reference(value: str) -> str | None:
    match = _IMAGE.fullmatch(value)
    if match is None:
        return (f"{value!r} is not a container image reference: [registry[:port]/]path[:tag][@sha256:digest], "
                "with a lowercase path and no spaces")
    if len(match["name"]) > IMAGE_NAME_MAX:
        return f"image name {match['name'][:40]!r}... is longer than {IMAGE_NAME_MAX} characters"
    return None


def group_id(value: int) -> str | None:
    if not 0 <= value <= MAX_GROUP_ID:
        return f"group id {value} is outside 0..{MAX_GROUP_ID}"
    return None
