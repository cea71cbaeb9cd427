"""Secret values seen by this process, so that no message leaves it carrying one.

Every credential the steps use (from Vault or, with a warning, from the config) is
remembered here; `scrub()` replaces any of them in text bound for logs, Dagster events and
errors. Driver messages (PostgreSQL's, MySQL's, Spark's) name users and hosts but could echo
a value back (a password pasted into the user field, say): scrubbing does not rely on them."""
from __future__ import annotations

import re
import threading

_lock = threading.Lock()
_values: set[str] = set()
MASK = "***"


def remember(*values: object) -> None:
    with _lock:
        for v in values:
            if v is not None and len(str(v)) >= 4:  # shorter strings would mask ordinary words
                _values.add(str(v))


SECRET_KEY = re.compile(r"(?i)pass|secret|token|jaas|credential|private|api_?key|access_?key")
_JAAS_SECRET = re.compile(r"(?i)\b(password|secret|token)\s*=\s*\"([^\"]*)\"")


def remember_values_of(mapping: dict) -> None:
    """Remembers the values of the secret-looking keys (password, secretAccessKey, sasl.jaas.
    config, ...) but not host, database or user, which errors must be able to name."""
    values = [v for k, v in mapping.items() if SECRET_KEY.search(str(k))]
    remember(*values)
    # a JAAS config (Kafka's sasl.jaas.config) holds its password inside: that alone too,
    # for a driver message that echoes it without the rest
    remember(*(m.group(2) for v in values for m in _JAAS_SECRET.finditer(str(v))))


def scrub(text: str) -> str:
    if not text:
        return text
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    # user:password@ in URLs and password=... in JDBC/driver property strings
    text = re.sub(r"(?i)(://[^/\s:@]+:)[^@\s/]+@", rf"\1{MASK}@", text)
    return re.sub(r"(?i)\b(password|secret[_a-z]*|token)=([^&;\s,)]+)", rf"\1={MASK}", text)
