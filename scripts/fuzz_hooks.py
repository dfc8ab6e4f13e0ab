"""Hooks of the API fuzzer (scripts/fuzz.sh): what the fuzzer cannot know about this API."""

import schemathesis

KEY_REUSED = "was already used for a different order"


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but one the API promises: an Idempotency-Key sent again with a
    different order is refused with 422 (README, "Retry safely"). The fuzzer draws keys from
    the header's pattern, the same key for different bodies more often than chance (its
    example first of all), and takes the refusal of a schema-valid request for a bug; the
    refusal is the point of the key. Only that exact answer is dropped: a 422 with any other
    message, or on a request without a key, still fails the run."""
    if response is None or response.status_code != 422:
        return True
    headers = {name.lower(): value for name, value in (case.headers or {}).items()}
    if "idempotency-key" not in headers:
        return True
    try:
        error = response.json().get("error", "")
    except ValueError:
        return True
    return KEY_REUSED not in str(error)
