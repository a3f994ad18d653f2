from tests.compliance.test_auth import *  # noqa
def test_print(client, keys, audit_log):
    for name, make in sorted(ASSERTION_ATTACKS.items()):
        request_token(client, make(keys))
        print(name, "->", details(last_records(audit_log)[0])["reason"])
