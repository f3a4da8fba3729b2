"""Developer sessions: `nox -s tests lint typecheck docs`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The default test suite (CPU; `-- -m slow` or `-- -m gpu` for the others)."""
    session.install("torch==2.13.0")
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "recipes", "data_prep", "benchmarks")
    session.run("ruff", "format", "--check", "src", "tests", "recipes", "data_prep", "benchmarks")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy: strict on rlkit.config, rlkit.algos and rlkit.registry (pyproject.toml), checked elsewhere."""
    session.install("torch==2.13.0")
    session.install("-e", ".[test]")
    session.run("mypy", "src/rlkit/config", "src/rlkit/algos", "src/rlkit/registry.py")


@nox.session
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("python", "-m", "rlkit.config.docs", "--check", "docs/config.md")
    session.run("mkdocs", "build", "--strict")
