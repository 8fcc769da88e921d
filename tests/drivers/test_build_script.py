"""The build script a host runs for source.git (`controller.specs.builds.BUILD`), against a real Git server.

Real git clones from `git http-backend` over HTTPS; the builder at the end is a recorder standing in
for podman (the real podman build runs on the quadlet hosts in `tests.apiserver.test_builds_e2e`).
What is proven here is what reaches the builder: the commit asked for, the directory and file inside
the checkout, the build arguments as arguments, and refusals of everything that leaves the checkout
or is not a repository over https.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from controller.specs.builds import build_argv, credential_files, preset
from schemas.project import GitSource, Template
from tests.gitserver import GitServer, WorkTree

RECORDER = """#!/bin/sh
python3 - "$@" >>"$RECORD" <<'PY'
import json, os, sys
argv = sys.argv[1:]
used = argv[argv.index("--file") + 1] if "--file" in argv else ""
text = open(used).read() if used.startswith("/") else None
left = os.path.exists(os.environ.get("CREDENTIALS", "/nonexistent"))
auth = argv[argv.index("--authfile") + 1] if "--authfile" in argv else ""
if "--digestfile" in argv:  # as the registry answers a push
    open(argv[argv.index("--digestfile") + 1], "w").write("sha256:" + "ab" * 32)
print(json.dumps({"cwd": os.getcwd(), "argv": argv, "containerfile": text, "credentials_left": left,
                  "auth": open(auth).read() if auth else None}))
PY
case " $* " in *" images "*) [ -z "${LISTED:-}" ] || printf '%s\n' $LISTED;; esac  # newest first, as podman's
"""


@pytest.fixture
def builder(tmp_path: Path, git_server: GitServer) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "podman").write_text(RECORDER)
    (bin_dir / "podman").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(tmp_path / "record.json"),
            "GIT_SSL_CAINFO": str(git_server.ca_file)}  # fmt: skip


def build(git: GitSource, commit: str, env: dict[str, str], template: Template = Template.container,
          credentials: str = "", tag: str = "localhost/codeb/apps/shop:0123456789ab",
          push: bool = False, store: str = "") -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = build_argv(git, commit, tag, template, credentials, push, store)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_the_commit_asked_for_is_built_in_its_context_with_its_arguments(
    git_server: GitServer, builder: dict[str, str], tmp_path: Path
) -> None:
    tree = WorkTree(git_server, "shop", tmp_path / "tree")
    first = tree.commit("one", {"web/Containerfile": "FROM scratch\n", "web/index.html": "one"})
    tree.commit("two", {"web/index.html": "two"})
    git = GitSource(url=git_server.url("shop"), context="web", build_args={"GREETING": "hi $(id) `id`"})
    done = build(git, first, builder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"built localhost/codeb/apps/shop:0123456789ab from commit {first}"
    record = json.loads(Path(builder["RECORD"]).read_text().splitlines()[0])  # the build; then its pruning
    assert Path(record["cwd"]).name == "web"
    tag = "localhost/codeb/apps/shop:0123456789ab"
    assert record["argv"] == ["build", "--layers", "--file", "Containerfile", "--tag", tag,
                              "--build-arg", "GREETING=hi $(id) `id`", "."]  # fmt: skip
    third = tree.commit("three", {"web/index.html": "three"})
    head = build(GitSource(url=git_server.url("shop"), context="web"), "", builder)  # no commit: the branch's head
    assert head.returncode == 0 and head.stdout.splitlines()[-1].endswith(f"from commit {third}"), head


def test_what_leaves_the_checkout_or_is_not_https_is_refused(
    git_server: GitServer, builder: dict[str, str], tmp_path: Path
) -> None:
    tree = WorkTree(git_server, "hostile", tmp_path / "tree")
    (tmp_path / "tree").mkdir(exist_ok=True)
    os.symlink("/etc", tmp_path / "tree" / "out")
    os.symlink("/etc/passwd", tmp_path / "tree" / "Dockerfile")
    tree.commit("links", {"Containerfile": "FROM scratch\n"})
    refused = {
        "out": build(GitSource(url=git_server.url("hostile"), context="out"), "", builder),
        "Dockerfile": build(GitSource(url=git_server.url("hostile"), containerfile="Dockerfile"), "", builder),
    }
    assert "context out leaves the repository" in refused["out"].stderr
    assert "./Dockerfile is not a file in the repository" in refused["Dockerfile"].stderr
    assert all(r.returncode != 0 for r in refused.values()) and not Path(builder["RECORD"]).exists()
    # git itself may use https and ssh only: no ext:: command, no file:// or plain http.
    for url in ("ext::sh -c touch% /tmp/codeb-pwned", f"file://{git_server.root}/hostile.git",
                git_server.url("hostile").replace("https://", "http://")):  # fmt: skip
        argv = build_argv(GitSource.model_construct(url=url, ref="main", context=".", containerfile="Containerfile",
                                                    build_args={}), "", "localhost/x:y")  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=builder, check=False)
        assert done.returncode != 0 and not Path(builder["RECORD"]).exists(), (url, done.stdout)
    assert not Path("/tmp/codeb-pwned").exists()


def test_a_template_builds_its_own_containerfile_only_where_the_repository_has_none(
    git_server: GitServer, builder: dict[str, str], tmp_path: Path
) -> None:
    tree = WorkTree(git_server, "pages", tmp_path / "tree")
    tree.commit("pages", {"index.html": "<h1>hi</h1>"})
    git = GitSource(url=git_server.url("pages"), base_image="localhost/codeb-rollout:1")
    done = build(git, "", builder, Template.static)
    assert done.returncode == 0 and "the template's is built" in done.stdout, done.stderr
    record = json.loads(Path(builder["RECORD"]).read_text().splitlines()[0])
    assert record["containerfile"] == preset(Template.static, git)
    assert record["containerfile"].startswith("FROM localhost/codeb-rollout:1\n")
    assert build(GitSource(url=git_server.url("pages")), "", builder).returncode != 0  # template container: none
    # The repository's own wins, whatever the template.
    tree.commit("own", {"Containerfile": "FROM scratch\n"})
    Path(builder["RECORD"]).unlink()
    assert build(git, "", builder, Template.nodejs).returncode == 0
    own = json.loads(Path(builder["RECORD"]).read_text().splitlines()[0])
    assert own["containerfile"] is None and own["argv"][2:4] == ["--file", "Containerfile"]


def test_a_private_repository_is_read_with_its_secrets_token_for_the_clone_only(
    builder: dict[str, str], tmp_path: Path
) -> None:
    private = GitServer(tmp_path / "private", tls=True, login=("deploy", "s3cret-token-value"))
    try:
        tree = WorkTree(private, "app", tmp_path / "tree")
        head = tree.commit("one", {"Containerfile": "FROM scratch\n"})
        git = GitSource(url=private.url("app"), credentials_secret_ref="git-token")
        env = {**builder, "GIT_SSL_CAINFO": str(private.ca_file)}

        def delivered(name: str, secret: dict[str, str]) -> str:
            """What the driver writes on a host before the run starts (`controller.drivers.builds`)."""
            where = tmp_path / name
            where.mkdir(mode=0o700)
            for file, value in credential_files(git, secret, "Secret apps/git-token").items():
                (where / file).write_text(value)
            return str(where)

        # No credentials: git is never prompted, the clone is refused.
        denied = build(git, "", env)
        assert denied.returncode != 0 and "could not read Username" in denied.stderr, denied.stderr
        wrong = delivered("wrong", {"username": "deploy", "token": "a-guess"})
        refused = build(git, "", env, credentials=wrong)
        assert refused.returncode != 0 and not Path(builder["RECORD"]).exists()
        assert not Path(wrong).exists()  # removed even when the clone fails
        right = delivered("right", {"username": "deploy", "token": "s3cret-token-value"})
        done = build(git, "", {**env, "CREDENTIALS": right}, credentials=right)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1].endswith(f"from commit {head}")
        assert "s3cret-token-value" not in done.stdout + done.stderr
        record = json.loads(Path(builder["RECORD"]).read_text().splitlines()[0])
        assert record["credentials_left"] is False  # gone before the Containerfile's steps run
        assert not Path(right).exists()
    finally:
        private.stop()


def test_a_pushed_build_has_the_registrys_credential_for_the_push_alone_and_reports_the_digest(
    git_server: GitServer, builder: dict[str, str], tmp_path: Path
) -> None:
    head = WorkTree(git_server, "pushed", tmp_path / "tree").commit("one", {"Containerfile": "FROM scratch\n"})
    git, tag = GitSource(url=git_server.url("pushed")), "registry.example.com:5000/codeb/apps/shop:0123456789ab"
    refused = build(git, "", builder, tag=tag, push=True)  # nothing delivered: nothing is built
    assert refused.returncode == 2 and "no credential for the registry" in refused.stderr
    assert not Path(builder["RECORD"]).exists()
    auth = '{"auths": {"registry.example.com:5000": {"auth": "secret"}}}'
    delivered = tmp_path / "run-credentials"
    delivered.mkdir(mode=0o700)
    (delivered / "registryAuth").write_text(auth)
    done = build(git, "", {**builder, "CREDENTIALS": str(delivered)}, credentials=str(delivered), tag=tag, push=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [f"pushed sha256:{'ab' * 32}", f"built {tag} from commit {head}"]
    calls = [json.loads(line) for line in Path(builder["RECORD"]).read_text().splitlines()]
    verbs = [call["argv"][0] for call in calls]
    assert verbs == ["build", "images", "push", "tag", "push", "untag"], verbs
    # The build's steps see neither the git nor the registry's credential; each push has the registry's.
    assert calls[0]["credentials_left"] is False and calls[0]["auth"] is None
    assert "--authfile" not in calls[0]["argv"] and not str(calls[0]["cwd"]).startswith(str(delivered))
    pushes = [call for call in calls if call["argv"][0] == "push"]
    assert [call["auth"] for call in pushes] == [auth, auth]
    assert pushes[0]["argv"][-1] == tag and pushes[1]["argv"][-1] == f"{tag.rsplit(':', 1)[0]}:{head}"
    assert not Path(f"{delivered}.auth").exists() and not delivered.exists()  # gone once pushed


def test_on_a_platforms_builder_every_podman_call_uses_the_namespaces_storage_and_the_run_tag_stays(
    git_server: GitServer, builder: dict[str, str], tmp_path: Path
) -> None:
    """Runtime kubernetes builds on a builder every namespace shares: each call of podman, the build, the
    pruning of older builds, the pushes, goes to the namespace's own storage; the run's tag stays there (the
    newest three are kept by the next build's pruning: an untagged image would stay for ever)."""
    head = WorkTree(git_server, "shared", tmp_path / "tree").commit("one", {"Containerfile": "FROM scratch\n"})
    git, tag = GitSource(url=git_server.url("shared")), "registry.example.com:5000/codeb/apps/shop:0123456789ab"
    delivered = tmp_path / "run-credentials"
    delivered.mkdir(mode=0o700)
    (delivered / "registryAuth").write_text('{"auths": {}}')
    store = str(tmp_path / "codeb-builds" / "apps")
    repository = tag.rsplit(":", 1)[0]
    # The repository's names, newest first, and a base image's name podman lists with them (the same image).
    listed = [tag, f"{repository}:a", "localhost/codeb-rollout:1", *(f"{repository}:{old}" for old in "bcd")]
    env = {**builder, "CREDENTIALS": str(delivered), "LISTED": " ".join(listed)}
    done = build(git, "", env, credentials=str(delivered), tag=tag, push=True, store=store)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line)["argv"] for line in Path(builder["RECORD"]).read_text().splitlines()]
    assert all(argv[:4] == ["--root", store, "--runroot", "/run/codeb-builds/apps"] for argv in calls), calls
    assert [argv[4] for argv in calls] == ["build", "images", "rmi", "rmi", "push", "tag", "push", "untag"]
    # The three newest of the repository stay (this one, a warm colour's, a rollback's); the base is not its own.
    assert [argv[5:] for argv in calls if argv[4] == "rmi"] == [[f"{repository}:c"], [f"{repository}:d"]]
    assert calls[-1][5:] == [tag, f"{tag.rsplit(':', 1)[0]}:{head}"]  # from the run's image, the commit's tag goes
