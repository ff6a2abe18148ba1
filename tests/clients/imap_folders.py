"""Folders and keywords with Python's imaplib, as a mail client uses them on first run.

Usage: imap_folders.py CLUSTER_JSON write NODE TOKEN
       imap_folders.py CLUSTER_JSON verify NODE TOKEN

`write` (through node NODE): creates Sent, Trash, Archive/2024 and a folder with a non-ASCII
name (modified UTF-7); appends to Sent with a keyword; sets keywords in INBOX and searches by
them; MOVEs one message to Trash and COPYs one to Archive/2024 (UIDPLUS answers checked);
renames Archive (its child follows), creates and deletes Junk, subscribes to Sent, and finally
renames INBOX (its messages go to a new folder, INBOX stays, empty).

`verify` (through another node, after the first was killed): everything `write` left, exactly.
Exits non-zero with a message on the first thing that is wrong (after retrying for a while:
the cluster may still be settling after the kill).
"""

import imaplib
import json
import re
import sys
import time

from clientlib import check, hostport


class Wrong(Exception):
    pass


def must(cond, what):
    if not cond:
        raise Wrong(what)


def login(node, user, password):
    imap = imaplib.IMAP4(*hostport(node["imap"]), timeout=30)
    typ, _ = imap.login(user, password)
    must(typ == "OK", "IMAP LOGIN failed")
    return imap


def ok(result, what):
    typ, data = result
    must(typ == "OK", f"{what}: {typ} {data}")
    return data


def message(token, subject):
    return (
        f"From: client@example.test\r\nSubject: {subject} {token}\r\n"
        "Date: Mon, 02 Dec 2024 10:00:00 +0000\r\n\r\n"
        f"body of {subject}\r\n"
    ).encode()


def names(imap, pattern="*", lsub=False):
    data = ok(imap.lsub('""', pattern) if lsub else imap.list('""', pattern), "LIST")
    out = {}
    for line in data:
        if line is None:
            continue
        m = re.match(rb'\(([^)]*)\) "/" (.*)$', line)
        must(m, f"unparsed LIST line {line!r}")
        name = m.group(2).decode()
        if name.startswith('"'):
            name = name[1:-1]
        out[name] = set(m.group(1).decode().split())
    return out


def subjects(imap, mailbox, token):
    """Subject → flags of every message in mailbox (selected read-only)."""
    ok(imap.select(f'"{mailbox}"', readonly=True), f"EXAMINE {mailbox}")
    data = ok(imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), f"FETCH {mailbox}")
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()
        subject = item[1].decode().strip().removeprefix("Subject: ").removesuffix(f" {token}")
        out[subject] = set(flags) - {"\\Recent"}
    return out


def status(imap, mailbox):
    data = ok(imap.status(f'"{mailbox}"', "(MESSAGES UIDNEXT UIDVALIDITY)"), f"STATUS {mailbox}")
    fields = re.search(rb"\((.*)\)", data[0]).group(1).split()
    return {fields[i].decode(): int(fields[i + 1]) for i in range(0, len(fields), 2)}


def write(imap, token):
    before = names(imap)
    must(set(before) == {"INBOX"}, f"a new user has only INBOX: {before}")
    for name in ["Sent", "Trash", "Archive/2024", "Entw&APw-rfe"]:
        ok(imap.create(f'"{name}"'), f"CREATE {name}")
    typ, data = imap.create("Sent")
    must(typ == "NO" and b"ALREADYEXISTS" in data[0], f"CREATE Sent again: {typ} {data}")
    typ, data = imap.create('"Bad&Name"')
    must(typ == "NO", f"an invalid modified UTF-7 name is refused: {typ} {data}")
    listed = names(imap)
    must("Archive" in listed and "\\HasChildren" in listed["Archive"], f"Archive made with its child: {listed}")

    # APPEND to Sent, with a keyword: APPENDUID names Sent's UIDVALIDITY.
    sent = status(imap, "Sent")
    data = ok(imap.append("Sent", "(\\Seen $Sent)", None, message(token, "sent one")), "APPEND Sent")
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    must(m and int(m.group(1)) == sent["UIDVALIDITY"], f"APPENDUID of Sent: {data} vs {sent}")
    must(int(m.group(2)) >= sent["UIDNEXT"], f"APPENDUID's UID at least Sent's UIDNEXT: {data} {sent}")
    for subject in ["first", "second", "third"]:
        ok(imap.append("INBOX", None, None, message(token, subject)), "APPEND INBOX")

    # Keywords: stored, listed in FLAGS, permitted by \*, searched.
    ok(imap.select("INBOX"), "SELECT INBOX")
    permanent = imap.untagged_responses.get("PERMANENTFLAGS", [b""])[-1]
    must(b"\\*" in permanent, f"PERMANENTFLAGS allows keywords: {permanent}")
    data = ok(imap.store("1", "+FLAGS", "($Forwarded $hello)"), "STORE keywords")
    must(b"$Forwarded" in data[0] and b"$hello" in data[0], f"STORE answers with the keywords: {data}")
    flags = imap.untagged_responses.get("FLAGS", [b""])[-1]
    must(b"$Forwarded" in flags, f"a FLAGS response names the new keyword: {flags}")
    ok(imap.store("1", "-FLAGS", "($hello)"), "STORE -keyword")
    hits = ok(imap.search(None, "KEYWORD", "$Forwarded"), "SEARCH KEYWORD")[0].split()
    must(hits == [b"1"], f"SEARCH KEYWORD $Forwarded: {hits}")
    hits = ok(imap.search(None, "KEYWORD", "$hello"), "SEARCH KEYWORD")[0].split()
    must(hits == [], f"SEARCH KEYWORD $hello after removing it: {hits}")
    hits = ok(imap.search(None, "UNKEYWORD", "$Forwarded"), "SEARCH UNKEYWORD")[0].split()
    must(hits == [b"2", b"3"], f"SEARCH UNKEYWORD $Forwarded: {hits}")

    # MOVE the second message to Trash; COPY the first to Archive/2024.
    uids = ok(imap.uid("SEARCH", None, "ALL"), "UID SEARCH")[0].split()
    trash = status(imap, "Trash")
    typ, data = imap.uid("MOVE", uids[1], "Trash")
    must(typ == "OK", f"UID MOVE: {typ} {data}")
    copyuid = imap.untagged_responses.get("COPYUID", [b""])[-1]
    must(copyuid.startswith(str(trash["UIDVALIDITY"]).encode()), f"COPYUID names Trash: {copyuid} {trash}")
    ok(imap.noop(), "NOOP")
    hits = ok(imap.search(None, "ALL"), "SEARCH ALL")[0].split()
    must(hits == [b"1", b"2"], f"INBOX after the MOVE: {hits}")
    data = ok(imap.copy("1", "Archive/2024"), "COPY")
    must(b"COPYUID" in data[0], f"COPY answers with COPYUID: {data}")
    typ, data = imap.copy("1", "Nowhere")
    must(typ == "NO" and b"TRYCREATE" in data[0], f"COPY to a missing folder: {typ} {data}")

    # RENAME with a child; CREATE and DELETE; SUBSCRIBE.
    ok(imap.rename("Archive", "Old-Archive"), "RENAME Archive")
    ok(imap.create("Junk"), "CREATE Junk")
    ok(imap.delete("Junk"), "DELETE Junk")
    typ, data = imap.delete("Junk")
    must(typ == "NO", f"DELETE of a deleted folder: {typ} {data}")
    typ, data = imap.delete("INBOX")
    must(typ == "NO", f"DELETE INBOX: {typ} {data}")
    ok(imap.subscribe("Sent"), "SUBSCRIBE Sent")
    ok(imap.close(), "CLOSE")

    # RENAME INBOX: its messages go to Saved; INBOX stays.
    ok(imap.rename("INBOX", "Saved"), "RENAME INBOX")


def verify(imap, token):
    listed = names(imap)
    want = {"INBOX", "Sent", "Trash", "Old-Archive", "Old-Archive/2024", "Entw&APw-rfe", "Saved"}
    must(set(listed) == want, f"LIST * shows {sorted(listed)}, not {sorted(want)}")
    must("\\HasChildren" in listed["Old-Archive"], f"Old-Archive has a child: {listed}")
    top = names(imap, "%")
    must(set(top) == want - {"Old-Archive/2024"}, f"LIST % shows {sorted(top)}")
    subscribed = names(imap, "*", lsub=True)
    must(set(subscribed) == {"Sent"}, f"LSUB shows {subscribed}")
    for name, count in [("INBOX", 0), ("Sent", 1), ("Trash", 1), ("Old-Archive/2024", 1), ("Saved", 2)]:
        got = status(imap, name)["MESSAGES"]
        must(got == count, f"{name} has {got} messages, not {count}")
    must(subjects(imap, "Sent", token) == {"sent one": {"\\Seen", "$Sent"}}, "Sent's message and flags")
    must(subjects(imap, "Trash", token) == {"second": set()}, f"Trash: {subjects(imap, 'Trash', token)}")
    archived = subjects(imap, "Old-Archive/2024", token)
    must(archived == {"first": {"$Forwarded"}}, f"the copy keeps its keyword: {archived}")
    saved = subjects(imap, "Saved", token)
    must(saved == {"first": {"$Forwarded"}, "third": set()}, f"Saved (was INBOX): {saved}")
    ok(imap.select('"Saved"'), "SELECT Saved")
    hits = ok(imap.search(None, "KEYWORD", "$Forwarded"), "SEARCH KEYWORD")[0].split()
    must(len(hits) == 1, f"SEARCH KEYWORD $Forwarded in Saved: {hits}")
    typ, _ = imap.select("Junk")
    must(typ == "NO", "Junk was deleted")


def main():
    cluster = json.load(open(sys.argv[1]))
    phase, node, token = sys.argv[2], cluster["nodes"][int(sys.argv[3])], sys.argv[4]
    user = cluster["users"]["pattern"].replace("{n}", str(cluster["users"]["first"] + 12))
    password = cluster["users"]["password"]
    if phase == "write":
        imap = login(node, user, password)
        try:
            write(imap, token)
        except Wrong as e:
            check(False, str(e))
        imap.logout()
    else:
        deadline = time.monotonic() + 30
        while True:
            try:
                imap = login(node, user, password)
                verify(imap, token)
                imap.logout()
                break
            except (Wrong, imaplib.IMAP4.error, OSError) as e:
                if time.monotonic() > deadline:
                    check(False, str(e))
                time.sleep(0.5)
    print("all checks passed")


if __name__ == "__main__":
    main()
