"""Build the `helpdesk` demo set: a fictional company's IT knowledge base and the questions staff ask.

    python embedexp/data/helpdesk/build.py          # rewrites the files next to this script
    python embedexp/data/helpdesk/build.py --bm25   # ... and prints the BM25 nDCG@10 of the test split
    python embedexp/data/helpdesk/build.py --control /tmp/helpdesk_control   # ... and writes the control set

Deterministic (seed below). Everything here was written for embedexp and is dedicated to the public
domain (CC0 1.0); the company, its systems and its procedures are fictional. See README.md for the design.

The idea: articles are written by IT staff in the company's own vocabulary (system codenames such as
"Larkspur", procedure names such as "token re-bind"), while staff ask in plain words ("the VPN keeps
asking me to log in"). A general model has never seen the codenames, so it must guess from the few
plain words an article happens to contain; fine-tuning on the train split teaches the vocabulary.
Every article is one (system, problem) pair. Test queries ask about (system, problem) pairs that no
train query asks about, in phrasings that no train query uses, so the model can only score well on
the test split by having learnt what the codenames and procedure names mean.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 16
HERE = Path(__file__).resolve().parent
COMPANY = "Tarnwick Freight"

# codename, plain-language ways staff refer to the system (query side; noun phrases that fit every phrasing), two objects the system deals
# with (article side), the owning support team (article side), error-code prefix (article side)
SYSTEMS = [
    (
        "Larkspur",
        [
            "the VPN",
            "the remote access app",
            "the app I use to reach the office network from home",
            "the work VPN on my laptop",
        ],
        ("tunnel profile", "gateway"),
        "Network Edge",
        "LKS",
    ),
    (
        "Tessera",
        [
            "the expenses system",
            "the expense claim site",
            "the tool where I claim back travel costs",
            "the expense reporting tool",
        ],
        ("claim", "receipt image"),
        "Finance Apps",
        "TSR",
    ),
    (
        "Harbor",
        [
            "the HR portal",
            "the site where I book my holidays",
            "the page where I see my payslip",
            "the HR self-service site",
        ],
        ("absence record", "pay statement"),
        "People Systems",
        "HRB",
    ),
    (
        "Quillon",
        [
            "the IT helpdesk portal",
            "the site where I log IT tickets",
            "the support ticket system",
            "the IT request form",
        ],
        ("incident", "work queue"),
        "Service Tooling",
        "QLN",
    ),
    (
        "Keyring",
        [
            "the company login page",
            "single sign-on",
            "the two-step login prompt",
            "the login that opens all the work apps",
        ],
        ("identity", "authenticator binding"),
        "Identity",
        "KRG",
    ),
    (
        "Wren",
        ["the video call app", "the online meeting app", "the software we use for video calls", "video conferencing"],
        ("room bridge", "call recording"),
        "Collaboration",
        "WRN",
    ),
    (
        "Drift",
        ["the shared drive", "our team file share", "the network folders", "the folder where we keep shared documents"],
        ("share", "mapped volume"),
        "Storage",
        "DRF",
    ),
    (
        "Pressbox",
        ["the office printers", "the printer by my desk", "the printer queue", "the print system"],
        ("print job", "release station"),
        "Workplace Devices",
        "PBX",
    ),
    (
        "Sable",
        ["the timesheet system", "the site where I log my hours", "the time tracking tool", "the weekly hours form"],
        ("time entry", "cost code"),
        "Finance Apps",
        "SBL",
    ),
    (
        "Gannet",
        [
            "the travel booking site",
            "the site for booking work flights and hotels",
            "the business travel app",
            "the trip booking tool",
        ],
        ("itinerary", "fare hold"),
        "Travel Desk",
        "GNT",
    ),
    (
        "Nimbus",
        [
            "the remote desktop",
            "the virtual desktop",
            "the Windows desktop I open in the browser",
            "the hosted desktop",
        ],
        ("session host", "desktop pool"),
        "End User Compute",
        "NMB",
    ),
    (
        "Halyard",
        [
            "the shipment tracking system",
            "the system where we track parcels and freight",
            "the consignment tracker",
            "the freight tracking app",
        ],
        ("consignment", "waybill"),
        "Operations Platforms",
        "HLY",
    ),
    (
        "Tallow",
        [
            "the purchasing system",
            "the site where I raise purchase orders",
            "the tool for ordering team supplies",
            "the procurement site",
        ],
        ("requisition", "supplier record"),
        "Finance Apps",
        "TLW",
    ),
    (
        "Lantern",
        [
            "the password manager",
            "the shared password vault",
            "the place where the team stores passwords",
            "the password safe",
        ],
        ("vault", "secret entry"),
        "Identity",
        "LNT",
    ),
    (
        "Orrery",
        ["the reporting dashboards", "the business reports site", "the sales figures dashboard", "management reports"],
        ("board", "dataset refresh"),
        "Data Platform",
        "ORY",
    ),
    (
        "Juniper",
        [
            "the phone system",
            "my desk phone",
            "the softphone on my laptop",
            "the app for calling customers from my computer",
        ],
        ("extension", "line appearance"),
        "Voice",
        "JNP",
    ),
    (
        "Ferry",
        [
            "the tool for sending large files to customers",
            "the secure file transfer site",
            "the site for sharing big files with outside companies",
            "the file exchange with partners",
        ],
        ("drop", "external recipient"),
        "Storage",
        "FRY",
    ),
    (
        "Spindle",
        ["my work phone", "the company mobile", "the work email setup on my phone", "the phone management app"],
        ("handset enrolment", "compliance profile"),
        "Mobility",
        "SPN",
    ),
    (
        "Moss",
        [
            "the file restore service",
            "the backup system",
            "the tool that gets old versions of files back",
            "the laptop backup app",
        ],
        ("snapshot", "restore point"),
        "Storage",
        "MOS",
    ),
    (
        "Cinder",
        [
            "the software centre",
            "the tool for installing programs on my laptop",
            "the app store for work laptops",
            "the self-service software shop",
        ],
        ("package", "catalogue item"),
        "End User Compute",
        "CND",
    ),
    (
        "Marlin",
        ["my work email", "the mail system", "company email", "my inbox"],
        ("mailbox", "distribution list"),
        "Messaging",
        "MRL",
    ),
    (
        "Anchor",
        ["the customer database", "the CRM", "the system where we keep client records", "the customer accounts system"],
        ("account record", "contact card"),
        "Commercial Apps",
        "ANC",
    ),
    (
        "Kiln",
        [
            "the contracts database",
            "the store for signed contracts",
            "the contract management system",
            "the contract approval tool",
        ],
        ("contract file", "clause library"),
        "Legal Tech",
        "KLN",
    ),
    (
        "Compass",
        ["the intranet", "the staff directory", "the company news site", "the internal homepage"],
        ("page", "directory profile"),
        "Digital Workplace",
        "CMP",
    ),
]

# Problems every system can have. Per problem: article titles and bodies in the company's vocabulary
# ({C} codename, {o1}/{o2} the system's objects, {T} support team, {E} error code), and query phrasings
# in plain words ({D} a plain description of the system). Phrasings are split between train and test.
PROBLEMS = [
    dict(
        key="auth_loop",
        titles=["{C}: auth loop after token expiry", "{C} auth loop (stale Keyring token)"],
        bodies=[
            "{C} returns to the Keyring prompt after every successful sign-in when the cached Keyring token is stale. "
            "Perform a token re-bind (TRB): close {C}, open Toolbox > Identity > Re-bind and sign in once more. "
            "The {o1} is not affected.",
            "An auth loop in {C} is caused by a cached token that Keyring no longer accepts (event {E}-401). "
            "A token re-bind (TRB) from Toolbox clears it; if the loop persists the {T} team can revoke the session server side.",
        ],
        queries=[
            "{D} keeps asking me to log in again and again",
            "{D} sends me back to the sign in page every time",
            "I sign in to {D} and it just asks for my password again",
            "stuck in a loop trying to log into {D}",
            "{D} won't stay logged in, it keeps bouncing me to the login screen",
            "every time I log in to {D} it asks me to log in once more",
            "can't get past the login on {D}, it keeps returning to it",
            "{D} forgets that I already signed in",
        ],
    ),
    dict(
        key="lockout",
        titles=["{C}: lockout flag set", "Clearing a {C} lockout flag"],
        bodies=[
            "After five failed attempts {C} sets a lockout flag on the account ({E}-423). Staff can clear it themselves "
            "at a self-service kiosk (SSK) or through an L2 unlock raised with {T}. Do not create a second account.",
            "A lockout flag in {C} blocks every {o1} action until it is cleared. Use the SSK to clear it, or request "
            "an L2 unlock; repeated flags are reviewed by {T}.",
        ],
        queries=[
            "{D} says my account is locked",
            "I typed my password wrong a few times and now {D} won't let me in",
            "locked out of {D} after too many wrong attempts",
            "how do I unlock my account on {D}",
            "{D} blocked me after I got the password wrong",
            "my account on {D} has been frozen, I mistyped my password",
            "{D} tells me I'm locked out",
            "got shut out of {D} for entering the wrong password",
        ],
    ),
    dict(
        key="latency",
        titles=["{C}: degraded response (region pinning)", "{C} latency above threshold"],
        bodies=[
            "Degraded response in {C} is usually caused by the client being pinned to the wrong region. Reset region pinning "
            "in Toolbox and clear the edge cache; loading a {o1} should then take under two seconds.",
            "{C} latency above threshold ({E}-504) points to an overloaded edge node. {T} rebalances the pool; users can "
            "clear the edge cache and re-pin to the home region meanwhile.",
        ],
        queries=[
            "{D} is really slow today",
            "{D} takes forever to load anything",
            "why is {D} so sluggish",
            "everything in {D} lags for ages",
            "{D} is crawling, each click takes a minute",
            "pages in {D} load very slowly",
            "{D} has been painfully slow all week",
            "{D} hangs for a long time before anything shows up",
        ],
    ),
    dict(
        key="launch_fault",
        titles=["{C}: fault on launch", "{C} client profile rebuild (PRB)"],
        bodies=[
            "A fault on launch in {C} means the local client profile is corrupt. Run a profile rebuild (PRB) from Toolbox; "
            "it keeps your {o1} settings and recreates everything else.",
            "When {C} terminates during start-up ({E}-100), the client profile must be rebuilt. A PRB takes about a minute; "
            "if it fails, {T} can reissue the client.",
        ],
        queries=[
            "{D} closes by itself as soon as I open it",
            "{D} crashes when it starts",
            "{D} disappears right after the splash screen",
            "{D} won't open at all",
            "{D} shuts down the second it launches",
            "when I start {D} it just quits",
            "{D} flashes up and then vanishes",
            "opening {D} makes it crash straight away",
        ],
    ),
    dict(
        key="entitlement",
        titles=["{C}: missing entitlement", "Requesting a {C} entitlement"],
        bodies=[
            "Access in {C} is granted by entitlement. If a {o1} shows {E}-403, the account is not in the required role group. "
            "Raise an ENT request in Quillon; the data owner approves it and {T} applies it within a working day.",
            "Entitlements for {C} follow role groups. A mover keeps old entitlements for 30 days; new ones need an ENT request "
            "approved by the data owner.",
        ],
        queries=[
            "{D} says I don't have permission",
            "I need access to {D} for my new role",
            "access denied when I open {D}",
            "my colleague can use {D} but I can't",
            "how do I get permission to use {D}",
            "{D} tells me I'm not allowed to see this",
            "I was never given rights to {D}",
            "{D} blocks me with a not authorised message",
        ],
    ),
    dict(
        key="provisioning",
        titles=["{C}: provisioning on a new device", "{C} device baseline"],
        bodies=[
            "{C} is part of the device baseline and is provisioned by Cinder. On a replacement device, run Baseline Sync "
            "from Toolbox; your {o1} settings follow your Keyring identity.",
            "If {C} is absent after a device swap, the device baseline did not complete. Re-run provisioning; {T} can push "
            "{C} manually when the baseline is stuck.",
        ],
        queries=[
            "how do I set up {D} on my new laptop",
            "just got a replacement computer and {D} is not on it",
            "need {D} on my new machine",
            "{D} is missing from my new laptop",
            "getting {D} onto a brand new computer",
            "my laptop was swapped and now {D} isn't there",
            "where do I find {D} on the laptop IT just gave me",
            "{D} didn't come with my new PC",
        ],
    ),
    dict(
        key="version_drift",
        titles=["{C}: version drift", "{C} update stuck in rollout ring"],
        bodies=[
            "Version drift occurs when {C} falls behind its rollout ring. Force a ring sync from Toolbox; the client then "
            "installs the current release without touching your {o1}.",
            "A {C} update that never completes ({E}-426) means the device is stuck between rollout rings. Ask {T} to reassign "
            "the ring, then force a ring sync.",
        ],
        queries=[
            "the update for {D} keeps failing",
            "{D} says I need a newer version but the upgrade won't finish",
            "stuck installing an update for {D}",
            "{D} wants to update and then errors out",
            "{D} is stuck on an old version",
            "can't upgrade {D}, the install never completes",
            "{D} nags me to update but the update never works",
            "the new version of {D} won't install",
        ],
    ),
    dict(
        key="stale_replica",
        titles=["{C}: stale replica", "{C} flush-and-pull (FNP)"],
        bodies=[
            "When a {o1} saved earlier does not appear, {C} is reading a stale replica. Run a flush-and-pull (FNP) from Toolbox "
            "to discard the local replica and fetch a fresh copy; nothing is lost on the server.",
            "Sync lag between {C} replicas can hide recent changes for up to an hour. An FNP forces a fresh pull; if items are "
            "still absent, {T} can check the replication log.",
        ],
        queries=[
            "things I saved in {D} yesterday are gone",
            "my stuff has disappeared from {D}",
            "I can't find what I entered in {D} last week",
            "{D} shows old information, not my latest changes",
            "{D} lost the work I did this morning",
            "changes I made in {D} aren't showing up",
            "{D} is showing an out of date version of my data",
            "where did my recent entries in {D} go",
        ],
    ),
    dict(
        key="write_rejected",
        titles=["{C}: write rejected", "{C} validation fault on submit"],
        bodies=[
            "{C} rejects a write when a field fails validation ({E}-422). The {o1} is kept as a draft; correct the highlighted "
            "field and submit again. A schema mismatch after a release is fixed by {T}.",
            "A validation fault when submitting a {o1} in {C} usually means a required {o2} is missing. Drafts are retained "
            "for 14 days.",
        ],
        queries=[
            "I get an error when I press submit in {D}",
            "{D} won't save my changes",
            "red error message when saving in {D}",
            "the submit button in {D} does nothing",
            "{D} refuses to accept my form",
            "saving in {D} fails every time",
            "{D} throws an error as soon as I hit save",
            "I can't send anything through {D}, it errors",
        ],
    ),
    dict(
        key="mobile_client",
        titles=["{C}: mobile client", "{C} in the managed app container"],
        bodies=[
            "The {C} mobile client runs inside the Spindle managed app container. If it will not load, the handset has fallen "
            "out of Spindle compliance; re-check compliance and reopen {C}.",
            "{C} on handsets requires the managed app container and a compliant Spindle profile. A non-compliant handset shows "
            "{E}-451 and cannot open any {o1}.",
        ],
        queries=[
            "{D} doesn't work on my phone",
            "the phone app for {D} won't load",
            "can't use {D} from my mobile",
            "{D} opens on my laptop but not on my mobile",
            "how do I get {D} working on my smartphone",
            "{D} on my phone just shows a blank screen",
            "my iPhone won't open {D}",
            "{D} is broken on Android",
        ],
    ),
    dict(
        key="notification_relay",
        titles=["{C}: notification relay", "{C} alerts not delivered"],
        bodies=[
            "{C} sends alerts through the notification relay. If they stop, check digest settings in {C} and confirm the relay "
            "is on the mail allow-list; {T} can replay missed alerts for the last seven days.",
            "Missing {C} alerts are usually held by the notification relay after a digest setting changed. Reset the digest "
            "to immediate; each {o1} change then triggers an alert again.",
        ],
        queries=[
            "I stopped getting emails from {D}",
            "no alerts from {D} anymore",
            "reminders from {D} don't come through",
            "{D} used to notify me but now it doesn't",
            "why am I not getting messages from {D}",
            "{D} notifications have gone quiet",
            "I never hear from {D} when something changes",
            "the emails {D} sends have dried up",
        ],
    ),
    dict(
        key="custodian_transfer",
        titles=["{C}: custodian transfer for a leaver", "{C} orphaned records"],
        bodies=[
            "When a leaver owned items in {C}, they become orphaned records. A manager requests a custodian transfer in Quillon; "
            "{T} moves every {o1} to the new custodian within two working days.",
            "Orphaned records in {C} remain readable but cannot be edited until a custodian transfer is completed as part of "
            "the leaver process.",
        ],
        queries=[
            "a colleague left and we need their stuff in {D}",
            "someone quit and their items in {D} are stuck with them",
            "move things in {D} from a person who left the company",
            "how do we take over a former employee's work in {D}",
            "{D} still lists an ex-colleague as the owner",
            "my team mate resigned, who gets their files in {D}",
            "nobody can edit what a departed colleague made in {D}",
            "hand over {D} items from someone who no longer works here",
        ],
    ),
    dict(
        key="approval_chain",
        titles=["{C}: approval chain out of date", "{C} line-manager sync"],
        bodies=[
            "{C} builds its approval chain from the line-manager field synced from Harbor each night. If approvals go to a "
            "previous manager, correct the line manager in Harbor; the chain updates after the next sync.",
            "An outdated approval chain in {C} is fixed at the source: Harbor. Until the nightly line-manager sync, set a "
            "delegate for the affected {o1}.",
        ],
        queries=[
            "my approvals in {D} still go to my old manager",
            "the wrong person approves my requests in {D}",
            "my boss changed but {D} still sends things to the old one",
            "{D} asks someone who left my team to sign off",
            "how do I change who approves my stuff in {D}",
            "{D} routes my requests to my former supervisor",
            "my new manager never sees my requests in {D}",
            "{D} has the wrong boss for me",
        ],
    ),
    dict(
        key="bulk_extract",
        titles=["{C}: bulk extract", "{C} CSV extract job"],
        bodies=[
            "Large exports from {C} run as a bulk extract job. Queue it from Reports > Extract; a CSV of every {o1} is "
            "delivered to your Drift home share.",
            "{C} limits on-screen export to 500 rows. For more, schedule a CSV extract job; {T} can extend the retention of "
            "the extract file.",
        ],
        queries=[
            "how do I get my data out of {D} into Excel",
            "download everything from {D} as a spreadsheet",
            "I need a copy of my records from {D} as a file",
            "export a list from {D}",
            "can {D} give me all the rows in a spreadsheet",
            "save what's in {D} to my computer as a table",
            "pull a full report out of {D} for analysis",
            "get {D} data into a spreadsheet",
        ],
    ),
]

# How some articles introduce a system the first time they name it (article-side words, chosen not to repeat
# the query-side descriptions above); used in about 60% of the articles, as real knowledge bases do.
GLOSS = {
    "Larkspur": "remote-access client",
    "Tessera": "expense management platform",
    "Harbor": "people and payroll portal",
    "Quillon": "service management platform",
    "Keyring": "identity provider",
    "Wren": "conferencing platform",
    "Drift": "file storage service",
    "Pressbox": "managed print service",
    "Sable": "time-recording system",
    "Gannet": "corporate travel platform",
    "Nimbus": "virtual desktop infrastructure",
    "Halyard": "consignment tracking platform",
    "Tallow": "procurement platform",
    "Lantern": "credential vault",
    "Orrery": "analytics portal",
    "Juniper": "telephony platform",
    "Ferry": "managed file transfer service",
    "Spindle": "mobile device management",
    "Moss": "backup service",
    "Cinder": "software deployment service",
    "Marlin": "messaging platform",
    "Anchor": "CRM platform",
    "Kiln": "contract lifecycle system",
    "Compass": "intranet",
}
GLOSS_SHARE = 0.6

# (system, problem) pairs that make no sense (no approvals in the VPN, no extracts from printers...) get no article
EXCLUDE = {
    "Larkspur": {"stale_replica", "write_rejected", "approval_chain", "bulk_extract", "custodian_transfer"},
    "Harbor": {"custodian_transfer"},
    "Keyring": {"stale_replica", "write_rejected", "custodian_transfer", "approval_chain", "bulk_extract"},
    "Wren": {"write_rejected", "approval_chain"},
    "Drift": {"approval_chain", "bulk_extract"},
    "Pressbox": {"stale_replica", "approval_chain", "bulk_extract", "custodian_transfer", "write_rejected"},
    "Gannet": {"custodian_transfer"},
    "Nimbus": {"approval_chain", "bulk_extract", "write_rejected"},
    "Halyard": {"approval_chain"},
    "Lantern": {"approval_chain"},
    "Orrery": {"approval_chain", "write_rejected"},
    "Juniper": {"approval_chain", "stale_replica", "write_rejected"},
    "Ferry": {"stale_replica"},
    "Spindle": {"mobile_client", "approval_chain", "bulk_extract", "write_rejected"},
    "Moss": {"approval_chain", "write_rejected", "mobile_client"},
    "Cinder": {"provisioning", "stale_replica", "custodian_transfer", "bulk_extract"},
    "Marlin": {"approval_chain", "write_rejected"},
    "Anchor": {"approval_chain"},
    "Compass": {"approval_chain", "custodian_transfer"},
}

N_TEST_PHRASINGS = 3  # per problem, phrasings reserved for test queries (the rest are train-only)
TEST_PROBLEMS_PER_SYSTEM = (4, 5)  # per system, problems whose article is a test target (alternating)
TRAIN_QUERIES_PER_PAIR = 3  # train queries per (system, problem) pair that is not a test target


def build(seed: int = SEED) -> dict:
    rng = random.Random(seed)
    corpus, doc_of = [], {}
    for s, (code, _, (o1, o2), team, prefix) in enumerate(SYSTEMS):
        for p, prob in enumerate(PROBLEMS):
            if prob["key"] in EXCLUDE.get(code, ()):
                continue
            slots = dict(C=code, o1=o1, o2=o2, T=team, E=prefix)
            title = rng.choice(prob["titles"]).format(**slots)
            body = rng.choice(prob["bodies"]).format(**slots)
            if rng.random() < GLOSS_SHARE:  # introduce the system on first mention
                body = body.replace(code, f"{code} (the {GLOSS[code]})", 1)
            doc_id = f"kb{len(corpus) + 1:03d}"
            corpus.append({"_id": doc_id, "title": title, "text": body})
            doc_of[s, p] = doc_id

    # test targets: 4-5 problems per system, spread evenly over the problems
    n_per = [TEST_PROBLEMS_PER_SYSTEM[i % 2] for i in range(len(SYSTEMS))]
    count = [0] * len(PROBLEMS)
    test_pairs = set()
    for s in rng.sample(range(len(SYSTEMS)), len(SYSTEMS)):
        order = sorted((p for p in range(len(PROBLEMS)) if (s, p) in doc_of), key=lambda p: (count[p], rng.random()))
        for p in order[: n_per[s]]:
            test_pairs.add((s, p))
            count[p] += 1

    phrasings = {}
    for p, prob in enumerate(PROBLEMS):
        qs = list(prob["queries"])
        rng.shuffle(qs)
        phrasings[p] = {"test": qs[:N_TEST_PHRASINGS], "train": qs[N_TEST_PHRASINGS:]}

    def query(s: int, p: int, split: str, used: set) -> str:
        for _ in range(100):
            text = rng.choice(phrasings[p][split]).format(D=rng.choice(SYSTEMS[s][1]))
            text = text[0].upper() + text[1:]
            if text not in used:
                used.add(text)
                return text
        raise RuntimeError(f"no unused phrasing for {SYSTEMS[s][0]} / {PROBLEMS[p]['key']}")

    queries, train, test, used = [], [], [], set()
    for s in range(len(SYSTEMS)):
        for p in range(len(PROBLEMS)):
            if (s, p) not in doc_of:
                continue
            if (s, p) in test_pairs:
                qid = f"te{len(test) + 1:03d}"
                queries.append({"_id": qid, "text": query(s, p, "test", used)})
                test.append((qid, doc_of[s, p]))
            else:
                for _ in range(TRAIN_QUERIES_PER_PAIR):
                    qid = f"tr{len(train) + 1:03d}"
                    queries.append({"_id": qid, "text": query(s, p, "train", used)})
                    train.append((qid, doc_of[s, p]))
    topic = {doc_id: (SYSTEMS[s][0], PROBLEMS[p]["key"]) for (s, p), doc_id in doc_of.items()}
    return {"corpus": corpus, "queries": queries, "train": train, "test": test, "topic": topic}


def write(data: dict, out: Path = HERE) -> None:
    def jsonl(path: Path, rows: list) -> None:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    jsonl(out / "corpus.jsonl", data["corpus"])
    jsonl(out / "queries.jsonl", data["queries"])
    (out / "qrels").mkdir(exist_ok=True)
    for split in ("train", "test"):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in data[split]]
        (out / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def control(data: dict, seed: int = 0) -> dict:
    """The control set: every train query's positive becomes the article of the same problem in another system
    (a fixed derangement of the systems; pairs whose target system has no such article are dropped). It still
    teaches the procedure vocabulary but scrambles what the codenames mean; the test split is unchanged."""
    rng = random.Random(seed)
    codes = [system[0] for system in SYSTEMS]
    while True:
        perm = codes[:]
        rng.shuffle(perm)
        if all(a != b for a, b in zip(codes, perm)):
            break
    moved = dict(zip(codes, perm))
    doc_of = {topic: doc_id for doc_id, topic in data["topic"].items()}
    train = []
    for qid, doc_id in data["train"]:
        code, problem = data["topic"][doc_id]
        if (moved[code], problem) in doc_of:
            train.append((qid, doc_of[moved[code], problem]))
    return {**data, "train": train}


def bm25_ndcg10(data: dict) -> float:
    """Lexical baseline on the test split: rank_bm25 Okapi over lower-cased word tokens of title + text."""
    import math
    import re

    from rank_bm25 import BM25Okapi

    def tokens(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    ids = [d["_id"] for d in data["corpus"]]
    bm25 = BM25Okapi([tokens(f"{d['title']} {d['text']}") for d in data["corpus"]])
    text = {q["_id"]: q["text"] for q in data["queries"]}
    total = 0.0
    for qid, rel in data["test"]:  # one relevant article per query: nDCG@10 = 1 / log2(rank + 1)
        scores = bm25.get_scores(tokens(text[qid]))
        ranked = sorted(range(len(ids)), key=lambda j: (-scores[j], ids[j]))[:10]
        total += next((1 / math.log2(r + 2) for r, j in enumerate(ranked) if ids[j] == rel), 0.0)
    return total / len(data["test"])


if __name__ == "__main__":
    import sys

    data = build()
    write(data)
    print(
        f"{len(data['corpus'])} documents, {len(data['queries'])} queries, "
        f"{len(data['train'])} train pairs, {len(data['test'])} test queries -> {HERE}"
    )
    if "--control" in sys.argv:  # --control DIR: also write the control set (see README) to DIR
        out = Path(sys.argv[sys.argv.index("--control") + 1])
        out.mkdir(parents=True, exist_ok=True)
        ctrl = control(data)
        write(ctrl, out)
        print(f"control set: {len(ctrl['train'])} train pairs -> {out}")
    if "--bm25" in sys.argv:
        print(f"BM25 nDCG@10 on the test split: {bm25_ndcg10(data):.3f}")
