"""``monsisra printer install | watch``: the virtual printer of a workstation. ``install``
registers the workstation for an account (password asked, or a token given), keeps its token
in a root-only file, installs the CUPS backend and creates the « MonSisra » queue; ``watch``
sends the PDFs that a program exports into a folder. Both talk to the server over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from monsisra.cli.runner import console

printer_app = typer.Typer(help="Imprimante virtuelle MonSisra : un document imprimé devient un brouillon.",
                          no_args_is_help=True)
DEFAULT_CONFIG = Path("/etc/monsisra/printer.json")
DEFAULT_BACKEND_DIR = Path("/usr/lib/cups/backend")
BACKEND_SOURCE = Path(__file__).with_name("cups_backend.py")


def _fail(message: str) -> None:
    console.print(f"[red]Erreur :[/red] {message}")
    raise typer.Exit(1)


def _detail(response: Any) -> str:
    try:
        return response.json().get("detail") or response.text
    except ValueError:
        return response.text[:300]


def _register(server: str, user: str, password: str, name: str) -> str:
    import httpx

    with httpx.Client(base_url=server, timeout=60) as client:
        r = client.post("/api/v1/auth/token", data={"username": user, "password": password})
        if r.status_code != 200:
            _fail(f"connexion refusée pour {user} : {_detail(r)}")
        access = r.json()["access_token"]
        r = client.post("/api/v1/me/workstations", json={"name": name},
                        headers={"Authorization": f"Bearer {access}"})
        if r.status_code != 201:
            _fail(f"poste non enregistré : {_detail(r)}")
        client.post("/api/v1/auth/revoke", headers={"Authorization": f"Bearer {access}"})
        return r.json()["token"]


def _write_private(path: Path, text: str, mode: int) -> None:
    """Written whole, readable by its owner only from its creation (``mode``: 0600 or 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


@printer_app.command("install")
def install(
    server: Annotated[str | None, typer.Option("--server", help="Adresse du serveur MonSisra")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Identifiant du compte (mot de passe demandé)")] = None,
    token: Annotated[str | None, typer.Option("--token", help="Jeton de poste déjà délivré (au lieu du mot de passe)")]
    = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Lire le mot de passe sur l'entrée")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Nom du poste (par défaut : nom de la machine)")] = None,
    config: Annotated[Path, typer.Option("--config", help="Fichier de configuration (lisible par root seul)")]
    = DEFAULT_CONFIG,
    backend_dir: Annotated[Path, typer.Option("--backend-dir", help="Dossier des backends CUPS")] = DEFAULT_BACKEND_DIR,
    queue: Annotated[str, typer.Option("--queue", help="Nom de l'imprimante")] = "MonSisra",
    cups_server: Annotated[str | None, typer.Option("--cups-server", help="Serveur CUPS (hôte:port)")] = None,
    no_queue: Annotated[bool, typer.Option("--no-queue", help="Ne pas créer la file CUPS")] = False,
) -> None:
    """Installe l'imprimante « MonSisra » de ce poste pour un compte."""
    from monsisra.config import Settings

    server = (server or Settings().base_url).rstrip("/")
    if token is None:
        if not user:
            _fail("indiquez --user IDENTIFIANT (le mot de passe est demandé) ou --token JETON")
        password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt(
            f"Mot de passe de {user}", hide_input=True)
        token = _register(server, user, password, name or socket.gethostname())
    _write_private(config, json.dumps({"server": server, "token": token, "queue": queue}, indent=1) + "\n", 0o600)
    source = BACKEND_SOURCE.read_text()
    python = shutil.which("python3") or sys.executable
    source = source.replace("#!/usr/bin/python3", f"#!{python}", 1)
    source = source.replace('CONFIG = "/etc/monsisra/printer.json"', f"CONFIG = {json.dumps(str(config))}", 1)
    backend = backend_dir / "monsisra"
    _write_private(backend, source, 0o700)  # 0700: CUPS runs it as root, and only root reads the token
    console.print(f"Configuration : {config} ; backend : {backend}")
    if no_queue:
        return
    lpadmin = shutil.which("lpadmin") or shutil.which("lpadmin", path="/usr/sbin:/sbin")
    if lpadmin is None:
        _fail("lpadmin introuvable : installez CUPS (paquets Debian cups cups-client cups-bsd)")
    command = [lpadmin, *(["-h", cups_server] if cups_server else []), "-p", queue, "-E", "-v", "monsisra:/",
               "-m", "raw", "-D", "MonSisra (imprimante virtuelle)"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        _fail(f"file CUPS non créée : {done.stderr.strip()}")
    console.print(f"[green]Imprimante « {queue} » prête[/green] : imprimez vers elle, le document arrive dans "
                  "vos brouillons MonSisra.")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _fail(f"configuration illisible ({path}) : {exc} ; lancez d'abord « monsisra printer install »")
    raise AssertionError  # unreachable


def send_file(conf: dict[str, Any], path: Path) -> tuple[int, str]:
    """(HTTP status, detail or draft address) of one PDF sent as a print job; status 0: unreachable."""
    from urllib.parse import quote

    import httpx

    try:
        r = httpx.post(conf["server"].rstrip("/") + "/api/v1/print-jobs", content=path.read_bytes(), timeout=120,
                       verify=conf.get("cafile") or True,
                       headers={"Authorization": f"Bearer {conf['token']}", "Content-Type": "application/pdf",
                                "X-Print-Title": quote(path.stem[:200])})
    except httpx.HTTPError as exc:
        return 0, str(exc)
    return r.status_code, r.json().get("url", "") if r.status_code == 201 else _detail(r)


@printer_app.command("watch")
def watch(
    folder: Annotated[Path, typer.Argument(help="Dossier où un logiciel exporte ses PDF")],
    config: Annotated[Path, typer.Option("--config", help="Configuration écrite par « printer install »")]
    = DEFAULT_CONFIG,
    interval: Annotated[float, typer.Option(help="Secondes entre deux passages")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="Un seul passage, puis fin")] = False,
) -> None:
    """Envoie chaque PDF déposé dans le dossier : il devient un brouillon ; le fichier passe dans
    « envoyes/ » (ou « refuses/ », avec la raison dans un .txt à côté)."""
    conf = _read_config(config)
    if not folder.is_dir():
        _fail(f"dossier introuvable : {folder}")
    sent_dir, refused_dir = folder / "envoyes", folder / "refuses"
    sizes: dict[Path, int] = {}
    while True:
        for path in sorted(folder.glob("*")):
            if not path.is_file() or path.suffix.lower() != ".pdf":
                continue
            size = path.stat().st_size
            if not once and sizes.get(path) != size:  # still being written: next pass
                sizes[path] = size
                continue
            sizes.pop(path, None)
            status, detail = send_file(conf, path)
            if status == 201:
                sent_dir.mkdir(exist_ok=True)
                path.replace(sent_dir / path.name)
                console.print(f"{path.name} → brouillon {detail}")
            elif status == 0 or status >= 500:
                console.print(f"[yellow]{path.name} : serveur injoignable, nouvel essai plus tard[/yellow] ({detail})")
            else:
                refused_dir.mkdir(exist_ok=True)
                path.replace(refused_dir / path.name)
                (refused_dir / f"{path.name}.txt").write_text(f"{status} {detail}\n")
                console.print(f"[red]{path.name} refusé[/red] : {detail}")
        if once:
            return
        time.sleep(interval)
