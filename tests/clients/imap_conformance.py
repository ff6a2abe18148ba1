"""What an IMAP conformance suite found wrong, checked with Python's imaplib against a node.

Usage: imap_conformance.py CLUSTER_JSON

\\Recent across sessions (first session told of a message sees it recent; SEARCH RECENT/NEW/OLD;
STATUS RECENT), ENVELOPE addresses (names from comments, groups, source routes), SEARCH FROM on
a name given in a comment, SENTON by the date as written, the parts of a message/rfc822
message, ID (RFC 2971), and a command line with a long UID set. Exits non-zero with a message
on the first thing that is wrong.
"""

import imaplib
import json
import smtplib
import sys
import uuid


from clientlib import check, hostport


def login(node, user, password):
    imap = imaplib.IMAP4(*hostport(node["imap"]), timeout=30)
    typ, _ = imap.login(user, password)
    check(typ == "OK", "IMAP LOGIN failed")
    return imap


def main():
    cluster = json.load(open(sys.argv[1]))
    node = cluster["nodes"][0]
    domain = cluster["domain"]
    password = cluster["users"]["password"]
    user = cluster["users"]["pattern"].replace("{n}", str(cluster["users"]["first"] + 11))
    address = f"{user}@{domain}"
    token = uuid.uuid4().hex

    inner = (
        "Subject: the inner one\r\n"
        "From: inner@example.test\r\n"
        "\r\n"
        "inner body\r\n"
    )
    messages = [
        # Names from a comment, an empty group, a source route; a date late in its day west
        # of UTC (the next day in UTC).
        (
            "From: fred@example.test (Fred Bloggs)\r\n"
            "Sender: <@relay.example.test:owner@list.example.test>\r\n"
            "To: undisclosed-recipients:;\r\n"
            f"Subject: addresses {token}\r\n"
            "Date: Tue, 31 Dec 2024 23:30:00 -1000\r\n"
            "\r\n"
            "hello\r\n"
        ),
        # A message that is itself message/rfc822.
        (
            "From: outer@example.test\r\n"
            f"Subject: encapsulated {token}\r\n"
            "Content-Type: message/rfc822\r\n"
            "\r\n" + inner
        ),
    ]
    with smtplib.SMTP(*hostport(node["smtp"]), timeout=30) as smtp:
        for m in messages:
            smtp.sendmail("tester@client.test", [address], m.encode())

    # --- \Recent: the first session told of the messages sees them recent, the next does not.
    first = login(node, user, password)
    typ, data = first.status("INBOX", "(MESSAGES RECENT)")
    check(b"RECENT 2" in data[0], f"STATUS before any session: {data}")
    typ, data = first.select("INBOX")
    check(typ == "OK" and data[0] == b"2", f"SELECT gave {typ} {data}")
    check(first.untagged_responses.get("RECENT") == [b"2"], f"RECENT: {first.untagged_responses}")
    typ, data = first.search(None, "RECENT")
    check(data[0] == b"1 2", f"SEARCH RECENT gave {data}")
    typ, data = first.search(None, "NEW")
    check(data[0] == b"1 2", f"SEARCH NEW gave {data}")
    typ, data = first.fetch("1", "(FLAGS)")
    check(b"\\Recent" in data[0], f"FLAGS lack \\Recent: {data}")
    second = login(node, user, password)
    typ, data = second.select("INBOX")
    check(second.untagged_responses.get("RECENT") == [b"0"], f"second RECENT: {second.untagged_responses}")
    typ, data = second.search(None, "OLD")
    check(data[0] == b"1 2", f"SEARCH OLD in the second session gave {data}")
    typ, data = second.status("INBOX", "(RECENT)")
    check(b"RECENT 0" in data[0], f"STATUS after the sessions: {data}")
    # New mail while both are selected: recent in the first to be told (the next NOOP).
    with smtplib.SMTP(*hostport(node["smtp"]), timeout=30) as smtp:
        smtp.sendmail("tester@client.test", [address], b"Subject: third\r\n\r\nthird\r\n")
    second.noop()
    typ, data = second.search(None, "RECENT")
    check(data[0] == b"3", f"the second session, told first, sees the new one recent: {data}")
    first.noop()
    typ, data = first.search(None, "RECENT")
    check(data[0] == b"1 2", f"the first session does not see the third recent: {data}")
    second.logout()

    # --- ENVELOPE addresses.
    typ, data = first.fetch("1", "(ENVELOPE)")
    env = data[0]
    for want in [
        b'(("Fred Bloggs" NIL "fred" "example.test"))',
        b'((NIL "@relay.example.test" "owner" "list.example.test"))',
        b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))',
    ]:
        check(want in env, f"ENVELOPE lacks {want}: {env}")
    typ, data = first.search(None, "FROM", '"Fred Bloggs"')
    check(data[0] == b"1", f"SEARCH FROM by a comment's name gave {data}")
    # SENTON by the date as written (31 Dec), not the UTC day (1 Jan).
    typ, data = first.search(None, "SENTON", "31-Dec-2024")
    check(data[0] == b"1", f"SENTON 31-Dec-2024 gave {data}")
    typ, data = first.search(None, "SENTON", "1-Jan-2025")
    check(data[0] == b"", f"SENTON 1-Jan-2025 gave {data}")

    # --- The parts of a message/rfc822 message.
    typ, data = first.fetch("2", "(BODY.PEEK[1])")
    check(data[0][1] == inner.encode(), f"BODY[1] gave {data}")
    typ, data = first.fetch("2", "(BODY.PEEK[1.HEADER])")
    check(data[0][1] == b"Subject: the inner one\r\nFrom: inner@example.test\r\n\r\n", f"BODY[1.HEADER] gave {data}")
    typ, data = first.fetch("2", "(BODY.PEEK[1.TEXT])")
    check(data[0][1] == b"inner body\r\n", f"BODY[1.TEXT] gave {data}")
    typ, data = first.fetch("2", "(BODY.PEEK[1.HEADER.FIELDS (SUBJECT)])")
    check(data[0][1] == b"Subject: the inner one\r\n\r\n", f"BODY[1.HEADER.FIELDS] gave {data}")

    # --- ID.
    typ, data = first.xatom("ID", '("name" "imaplib" "version" "3")')
    check(typ == "OK", f"ID gave {typ} {data}")
    check(b'"name" "clusterbench"' in first.untagged_responses.get("ID", [b""])[0], f"ID: {first.untagged_responses}")

    # --- A command line longer than 8 KB: a long UID set.
    long_set = ",".join(str(n) for n in range(1, 9000, 2))
    check(len(long_set) > 16_000, "the set is long")
    typ, data = first.uid("FETCH", long_set, "(FLAGS)")
    check(typ == "OK", f"a long UID FETCH gave {typ} {data}")

    first.logout()
    print("imap conformance: all checks passed")


if __name__ == "__main__":
    main()
