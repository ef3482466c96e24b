"""The ``backbone-swap`` command line: parsing, one library call per command, and user-facing errors.

Heavy libraries (torch, transformers) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from backbone_swap.errors import BackboneSwapError

app = typer.Typer(
    name="backbone-swap",
    help="Move a LLaVA-style VLM onto a newer LLM, retrain it the same way, and find out task by task "
    "whether it paid off.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


AllowPickle = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow loading pickle (.bin) weights, which can run code.")
]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow custom model code shipped inside a checkpoint folder.")
]


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A local VLM or LLM checkpoint folder.")],
    llm: Annotated[
        Path | None, typer.Option("--llm", help="A newer LLM: say whether it can receive PATH's vision tower.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Show what is inside a checkpoint (from its config and weight index; no weights are loaded)."""
    from backbone_swap.anatomy import compatibility, read_anatomy
    from backbone_swap.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    anatomy = read_anatomy(ckpt)
    result: dict[str, Any] = anatomy.to_dict()
    if llm is not None:
        llm_ckpt = open_checkpoint(llm, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        llm_anatomy = read_anatomy(llm_ckpt)
        result = {"model": result, "llm": llm_anatomy.to_dict(),
                  "transplant": compatibility(anatomy, llm_anatomy, llm_ckpt).to_dict()}
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from backbone_swap.inspect_view import print_inspection

    print_inspection(result)


@app.command()
def transplant(
    vlm: Annotated[Path, typer.Option("--vlm", help="The existing LLaVA checkpoint (its vision side is kept).")],
    llm: Annotated[Path, typer.Option("--llm", help="The newer causal LM to move it onto.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the new VLM checkpoint.")],
    seed: Annotated[int, typer.Option(help="Seed of the new projector's initialisation.")] = 0,
    projector: Annotated[
        str, typer.Option(help="'new': fresh projector for the new hidden size; 'reuse': copy the old one.")
    ] = "new",
    chat_template: Annotated[
        Path | None, typer.Option("--chat-template", help="Jinja chat template file to use instead of the LLM's.")
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest weight file written, e.g. 5GB.")] = "5GB",
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is whole).")]
    = False,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Build a new VLM: the old vision tower (bit-identical), a fresh projector, and the newer LLM."""
    from backbone_swap.transplant import transplant as run_transplant

    result = run_transplant(
        vlm, llm, output, seed=seed, projector=projector, chat_template=chat_template, overwrite=overwrite,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, max_shard_size=max_shard_size,
    )
    changes = result.manifest["changes"]
    added = ", ".join(changes["added_tokens"]) or "none"
    typer.echo(f"wrote {result.output} (projector {changes['projector']['shape'][0]} -> "
               f"{changes['projector']['shape'][1]}, added tokens: {added})")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a ``BackboneSwapError`` becomes one line on stderr and exit code 1.

    Usage errors are click's (exit code 2); any other exception is a bug and keeps its traceback.
    """
    try:
        app(args=argv, standalone_mode=True)
    except BackboneSwapError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
