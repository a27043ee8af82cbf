#!/usr/bin/python3
"""MonSisra CUPS backend: sends each printed document to the MonSisra server, where it becomes
a draft in the user's « Brouillons » with the PDF attached.

Installed by ``monsisra printer install`` into the CUPS backend directory as ``monsisra``
(mode 0700: CUPS runs it as root, so it may read its root-only configuration, which holds the
workstation token). Standard library only: it runs with the system's Python, not MonSisra's.
Called by CUPS as ``monsisra job-id user title copies options [file]`` (the document on stdin
when no file is given), and without arguments to say what it is.
"""

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

CONFIG = "/etc/monsisra/printer.json"  # replaced at installation
OK, FAILED, RETRY = 0, 1, 6  # CUPS_BACKEND_OK, _FAILED, _RETRY


def _pdf(data: bytes) -> bytes:
    """The document as PDF: PostScript (what older programs print) is converted by Ghostscript
    when it is installed."""
    if data.lstrip()[:5] == b"%PDF-" or not data.startswith(b"%!") or shutil.which("ps2pdf") is None:
        return data
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.ps"), os.path.join(tmp, "out.pdf")
        with open(src, "wb") as f:
            f.write(data)
        subprocess.run(["ps2pdf", src, dst], check=True, timeout=300)  # noqa: S603,S607
        with open(dst, "rb") as f:
            return f.read()


def send(conf: dict, data: bytes, title: str) -> dict:
    """POST the document to ``<server>/api/v1/print-jobs`` with the workstation token."""
    url = conf["server"].rstrip("/") + "/api/v1/print-jobs"
    request = urllib.request.Request(url, data=data, method="POST", headers={  # noqa: S310 (configured server)
        "Authorization": "Bearer " + conf["token"], "Content-Type": "application/pdf",
        "X-Print-Title": urllib.parse.quote(title[:200])})
    context = ssl.create_default_context(cafile=conf.get("cafile") or None) if url.startswith("https:") else None
    with urllib.request.urlopen(request, timeout=120, context=context) as response:  # noqa: S310
        return json.load(response)


def main(argv: list) -> int:
    if len(argv) == 1:
        print('network monsisra "Unknown" "MonSisra (imprimante virtuelle)"')
        return OK
    if len(argv) not in (6, 7):
        sys.stderr.write("Usage: monsisra job-id user title copies options [file]\n")
        return FAILED
    try:
        with open(CONFIG) as f:
            conf = json.load(f)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ERROR: configuration MonSisra illisible ({CONFIG}) : {exc}\n")
        return FAILED
    if len(argv) == 7:
        with open(argv[6], "rb") as f:
            data = f.read()
    else:
        data = sys.stdin.buffer.read()
    try:
        body = send(conf, _pdf(data), argv[3] or "Document imprimé")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        sys.stderr.write(f"ERROR: MonSisra a refusé le document ({exc.code}) : {detail}\n")
        return FAILED
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"ERROR: serveur MonSisra injoignable : {exc}\n")
        return RETRY
    sys.stderr.write(f"INFO: brouillon MonSisra créé : {body.get('url', '')}\n")
    return OK


if __name__ == "__main__":
    sys.exit(main(sys.argv))
