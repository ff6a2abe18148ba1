"""Drives a clusterbench node with Python's standard mail clients, as a user would.

Usage: mail_clients.py CLUSTER_JSON

Sends with smtplib, reads back with poplib and imaplib, checks the bytes, flags, deletes and
expunges. Exits non-zero with a message on the first thing that is wrong.
"""

import imaplib
import json
import poplib
import smtplib
import sys
import uuid


from clientlib import check, hostport


def main():
    cluster = json.load(open(sys.argv[1]))
    node = cluster["nodes"][0]
    domain = cluster["domain"]
    password = cluster["users"]["password"]
    user = cluster["users"]["pattern"].replace("{n}", str(cluster["users"]["first"] + 7))
    address = f"{user}@{domain}"
    token = uuid.uuid4().hex

    # --- SMTP: one message with a dot-leading line and 8-bit text, one with two recipients.
    body = (
        f"From: Tester <tester@client.test>\r\n"
        f"To: {address}\r\n"
        f"Subject: python {token}\r\n"
        f"Message-ID: <{token}@client.test>\r\n"
        f"\r\n"
        f"first line\r\n"
        f".a line that starts with a dot\r\n"
        f"..two dots\r\n"
        f"last line\r\n"
    )
    with smtplib.SMTP(*hostport(node["smtp"]), timeout=30) as smtp:
        code, caps = smtp.ehlo("client.test")
        check(code == 250, f"EHLO answered {code}")
        for ext in ("pipelining", "8bitmime", "size"):
            check(smtp.has_extn(ext), f"EHLO does not advertise {ext}")
        refused = smtp.sendmail("tester@client.test", [address], body.encode())
        check(refused == {}, f"recipients refused: {refused}")
        other = cluster["users"]["pattern"].replace("{n}", str(cluster["users"]["first"] + 8))
        smtp.sendmail("tester@client.test", [address, f"{other}@{domain}"], b"Subject: second\r\n\r\nhello twice\r\n")
        try:
            smtp.sendmail("tester@client.test", ["someone@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
            check(False, "relay attempt was accepted")
        except smtplib.SMTPRecipientsRefused as e:
            code, msg = e.recipients["someone@elsewhere.test"]
            check(code == 550 and b"5.7.1" in msg, f"relay refused with {code} {msg}")
        code, _ = smtp.verify(address)
        check(code == 252, f"VRFY answered {code}")

    # --- POP3: list, uidl, top, retr byte for byte, dele, quit commits.
    pop = poplib.POP3(*hostport(node["pop3"]), timeout=30)
    pop.user(user)
    pop.pass_(password)
    count, size = pop.stat()
    check(count == 2, f"POP3 STAT shows {count} messages, expected 2")
    _, listing, _ = pop.list()
    check(len(listing) == 2, f"LIST shows {listing}")
    _, uidls, _ = pop.uidl()
    check(len(set(u.split()[1] for u in uidls)) == 2, f"UIDL not unique: {uidls}")
    _, lines, _ = pop.retr(1)
    stored = b"\r\n".join(lines) + b"\r\n"
    check(stored.startswith(b"Received: "), "stored message has no Received: header first")
    check(stored.endswith(body.encode()), f"POP3 RETR is not the sent message byte for byte:\n{stored!r}")
    _, top, _ = pop.top(1, 1)
    check(top[-1] == b"first line" and b"" in top, f"TOP 1 1 gave {top}")
    pop.dele(2)
    pop.quit()
    pop = poplib.POP3(*hostport(node["pop3"]), timeout=30)
    pop.user(user)
    pop.pass_(password)
    check(pop.stat()[0] == 1, "POP3 DELE + QUIT did not delete the message")
    pop.quit()

    # --- IMAP: select, search, fetch, flag, append, expunge.
    imap = imaplib.IMAP4(*hostport(node["imap"]), timeout=30)
    typ, _ = imap.login(user, password)
    check(typ == "OK", "IMAP LOGIN failed")
    typ, data = imap.select("INBOX")
    check(typ == "OK" and data[0] == b"1", f"SELECT INBOX gave {typ} {data}")
    typ, data = imap.search(None, "UNSEEN")
    check(data[0] == b"1", f"SEARCH UNSEEN gave {data}")
    typ, data = imap.fetch("1", "(BODY.PEEK[])")
    check(data[0][1] == stored, "IMAP BODY.PEEK[] differs from what POP3 returned")
    typ, data = imap.fetch("1", "(ENVELOPE RFC822.SIZE UID)")
    check(token.encode() in data[0], f"ENVELOPE lacks the subject: {data}")
    check(f"RFC822.SIZE {len(stored)}".encode() in data[0], f"RFC822.SIZE wrong: {data}")
    typ, data = imap.fetch("1", "(RFC822)")
    check(data[0][1] == stored, "IMAP RFC822 differs")
    typ, data = imap.fetch("1", "(FLAGS)")
    check(b"\\Seen" in data[0], f"fetching RFC822 did not set \\Seen: {data}")
    typ, data = imap.store("1", "+FLAGS", "(\\Flagged)")
    check(typ == "OK" and b"\\Flagged" in data[0], f"STORE +FLAGS gave {typ} {data}")
    typ, data = imap.search(None, "FLAGGED")
    check(data[0] == b"1", f"SEARCH FLAGGED gave {data}")
    appended = b"Subject: appended\r\n\r\nappended by imaplib\r\n"
    typ, data = imap.append("INBOX", "(\\Seen)", None, appended)
    check(typ == "OK", f"APPEND gave {typ} {data}")
    typ, data = imap.select("INBOX")
    check(data[0] == b"2", f"after APPEND, EXISTS is {data}")
    typ, data = imap.fetch("2", "(BODY[])")
    check(data[0][1] == appended, "appended message differs")
    typ, data = imap.uid("SEARCH", None, "ALL")
    uids = data[0].split()
    check(len(uids) == 2, f"UID SEARCH ALL gave {data}")
    typ, data = imap.uid("FETCH", uids[0].decode(), "(BODY.PEEK[HEADER])")
    check(data[0][1].startswith(b"Received: ") and data[0][1].endswith(b"\r\n\r\n"), f"BODY[HEADER] gave {data}")
    imap.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = imap.expunge()
    check(typ == "OK" and data[0] == b"1", f"EXPUNGE gave {typ} {data}")
    typ, data = imap.search(None, "ALL")
    check(data[0] == b"1", f"after EXPUNGE, SEARCH ALL gave {data}")
    imap.close()
    imap.logout()

    # The expunge is visible to a new POP3 session too.
    pop = poplib.POP3(*hostport(node["pop3"]), timeout=30)
    pop.user(address)
    pop.pass_(password)
    _, lines, _ = pop.retr(1)
    check(b"\r\n".join(lines) + b"\r\n" == appended, "POP3 does not see the IMAP expunge")
    pop.quit()

    # Wrong password.
    try:
        imap = imaplib.IMAP4(*hostport(node["imap"]), timeout=30)
        imap.login(user, "wrong")
        check(False, "IMAP login with a wrong password succeeded")
    except imaplib.IMAP4.error:
        pass
    print("python mail clients: all checks passed")


if __name__ == "__main__":
    main()
