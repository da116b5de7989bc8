"""The Dockerfile agrees with pyproject.toml: extras that exist, an entry point that exists, a pinned torch base."""

import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _args(keyword: str) -> list[str]:
    return [rest for kw, rest in _instructions() if kw == keyword]


def test_pip_install_extras_all_exist_in_pyproject():
    installs = [cmd for cmd in _args("RUN") if "pip install" in cmd]
    groups = [group for cmd in installs for group in re.findall(r"\.\[([^\]]+)\]", cmd)]
    extras = {extra.strip() for group in groups for extra in group.split(",")}
    assert extras, "the Dockerfile installs the package without any extras"
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_entrypoint_is_a_project_script():
    (entrypoint,) = _args("ENTRYPOINT")
    command = json.loads(entrypoint)  # exec form: signals reach the trainer, no shell in between
    assert command[0] in PYPROJECT["project"]["scripts"]


def test_no_credentials_are_baked_into_the_image():
    for keyword in ("ENV", "ARG", "LABEL"):
        for args in _args(keyword):
            assert not re.search(r"TOKEN|KEY|SECRET|PASSWORD", args, re.IGNORECASE), f"{keyword} {args}"


def test_base_image_is_a_pinned_cuda_pytorch_inside_the_supported_torch_range():
    (base,) = _args("FROM")
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-devel", base)
    assert match, base
    torch_pin = next(Requirement(dep) for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("torch"))
    assert torch_pin.specifier.contains(Version(match.group(1)))
    # Below 2.8 TRL's fused LM head upcasts, transformers drops fused AdamW and its FSDP2 path raises.
    assert Version(match.group(1)) >= Version("2.8")


def test_readme_names_the_base_image_and_the_torch_it_carries():
    (base,) = _args("FROM")
    readme = (ROOT / "README.md").read_text()
    assert f"`{base}`: torch {base.split(':')[1].split('-')[0]}" in readme


def test_hf_home_is_a_volume_so_downloads_outlive_the_container():
    env = " ".join(_args("ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    assert hf_home in " ".join(_args("VOLUME"))


def test_dependencies_are_installed_before_the_code_is_copied():
    steps = [(kw, rest) for kw, rest in _instructions() if kw in ("COPY", "RUN")]
    first_code_copy = next(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and "sft_recipes" in rest)
    first_install = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "pip install" in rest)
    assert first_install < first_code_copy


def test_copied_paths_exist_and_are_not_dockerignored():
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for args in _args("COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, source
    assert {".git", ".venv", "outputs"} <= ignored
