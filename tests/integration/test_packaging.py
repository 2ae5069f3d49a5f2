"""What the Debian package ships besides the binaries (issue 12): porticoctl's
bash completion, driven through bash's own COMP_WORDS/COMP_CWORD and
compgen, with backend names from a running Portico; and the man pages,
which must render with groff without a warning. (scripts/check_package.sh
checks the same on the installed package in CI.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from harness import REPO_ROOT, porticoctl_bin

COMPLETION = REPO_ROOT / "conf/bash-completion/porticoctl"
MAN_PAGES = ("portico.8", "porticoctl.8", "portico.toml.5")


def complete(*words: str, path_dir: str | None = None) -> list:
    """COMPREPLY for the command line `words` (the last word is the one being
    completed, "" for a new word)."""
    quoted = " ".join("'%s'" % w.replace("'", "'\\''") for w in words)
    script = ('source "%s"\nCOMP_WORDS=(%s)\nCOMP_CWORD=%d\nCOMPREPLY=()\n_porticoctl\n'
              'printf "%%s\\n" "${COMPREPLY[@]}"\n' % (COMPLETION, quoted, len(words) - 1))
    env = dict(os.environ)
    if path_dir:
        env["PATH"] = path_dir + os.pathsep + env["PATH"]
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0 and r.stderr == "", r
    return [l for l in r.stdout.split("\n") if l]


def test_completion_of_commands_sub_commands_and_options():
    assert complete("porticoctl", "") == ["sessions", "kick", "lookup", "health", "probe", "backend", "monitor", "actions",
                                          "component", "protocol-log", "user", "fleet", "stats", "reload", "commands",
                                          "help"]
    assert complete("porticoctl", "mon") == ["monitor"]
    assert complete("porticoctl", "--json", "pro") == ["probe", "protocol-log"]
    assert complete("porticoctl", "-") == ["--socket", "--json", "--timeout", "--help", "--help-all"]
    assert complete("porticoctl", "monitor", "") == ["disable", "repairing", "enable", "override"]
    assert complete("porticoctl", "monitor", "override", "ImapSelf") == ["ImapSelfTestMonitor"]
    assert complete("porticoctl", "monitor", "override", "ImapSelfTestMonitor", "--") == [
        "--target", "--duration", "--state", "--json", "--help"]
    assert complete("porticoctl", "monitor", "override", "X", "--state", "") == [
        "Disabled", "Repairing", "Healthy", "Degraded"]
    assert complete("porticoctl", "monitor", "override", "rem") == ["remove"]
    assert complete("porticoctl", "backend", "") == ["list", "drain", "enable"]
    assert complete("porticoctl", "lookup", "") == ["flush"]
    assert complete("porticoctl", "user", "") == ["hold", "release", "list"]
    assert complete("porticoctl", "user", "hold", "alice", "--") == ["--ttl", "--json", "--help"]
    assert complete("porticoctl", "lookup", "flush", "--") == ["--user", "--json", "--help"]
    assert complete("porticoctl", "component", "ImapProxy", "") == ["active", "inactive"]
    assert complete("porticoctl", "protocol-log", "on", "--") == ["--user", "--ip", "--ttl", "--json", "--help"]
    assert complete("porticoctl", "protocol-log", "") == ["on", "off", "status"]
    assert complete("porticoctl", "probe", "IMAP.Protocol/ImapD") == ["IMAP.Protocol/ImapDeepTestProbe"]
    assert complete("porticoctl", "sessions", "--b") == ["--backend"]
    assert complete("porticoctl", "--timeout", "1") == ["15m", "1h", "1d"]


def test_completion_asks_the_running_portico_for_backend_names(portico, tmp_path):
    """`backend drain <TAB>` and `--target <TAB>` offer the backends the
    running Portico has (through porticoctl --socket as given on the line);
    without a Portico there is nothing to offer, quickly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(porticoctl_bin(), bin_dir / "porticoctl")
    sock = str(portico.admin_socket)
    assert complete("porticoctl", "--socket", sock, "backend", "drain", "", path_dir=str(bin_dir)) == ["mbx1", "mbx2"]
    assert complete("porticoctl", "-s", sock, "monitor", "override", "M", "--target", "mb",
                    path_dir=str(bin_dir)) == ["mbx1", "mbx2"]
    assert complete("porticoctl", "--socket", sock, "probe", "IMAP/ImapCTPProbe", "", path_dir=str(bin_dir)) == [
        "mbx1", "mbx2"]
    assert complete("porticoctl", "--socket", str(tmp_path / "none.sock"), "backend", "enable", "",
                    path_dir=str(bin_dir)) == []


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_without_warnings(page):
    groff = shutil.which("groff")
    assert groff, "groff missing: scripts/setup.sh installs groff-base"
    src = REPO_ROOT / "docs/man" / page
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(src)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r
    r = subprocess.run(["man", "-l", str(src)], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0"))
    assert r.returncode == 0, r
    lines = re.sub(".\x08", "", r.stdout).splitlines()  # man's overstrike bold, off a terminal
    assert lines[0].split()[0] == page.rsplit(".", 1)[0].upper() + "(" + page.rsplit(".", 1)[1] + ")", lines[0]
    for section in ("NAME", "DESCRIPTION", "SEE ALSO"):
        assert section in lines, (page, section)
