"""Hooks of the API fuzzer (scripts/fuzz.sh): what the fuzzer cannot know about this API."""

import schemathesis

# The message of that 422, for an order and for a bulk action alike.
KEY_REUSED = "was already used for a different"


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but one the API promises: an Idempotency-Key sent again with a
    different order, or a different bulk request, is refused with 422 (README, "Retry
    safely", "Bulk actions"). The fuzzer draws keys from
    the header's pattern, the same key for different bodies more often than chance (its
    example first of all), and takes the refusal of a schema-valid request for a bug; the
    refusal is the point of the key. Only that finding on that exact answer is dropped: any
    other finding on it (a body outside its schema, say), a 422 with any other message, or one
    to a request without a key, still fails the run."""
    # ST202: "Schema-valid request rejected", schemathesis's code for that finding.
    if getattr(failure, "code", None) != "ST202":
        return True
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
