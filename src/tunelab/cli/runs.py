"""The commands on runs: train, eval, predict, chat, merge, serve, baseline, init, sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli.common import (
    CheckpointOption,
    RunArgument,
    SetOption,
    console,
    prepare,
)
from tunelab.errors import TunelabError

app = typer.Typer(
    help="Fine-tune small open LLMs with LoRA: validated data in, an evaluated adapter out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.")],
    overrides: SetOption = None,
    model: Annotated[
        str | None, typer.Option(help="Model spec; same as --set model.name=...")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete an existing run of the same name.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(min=1, help="Data-parallel processes on this machine (accelerate launch)."),
    ] = 1,
    budget: Annotated[
        str | None,
        typer.Option(
            help="Train for this long instead of epochs: 90s, 10m, 2h (same as --set "
            "train.budget=...); loading and the final evaluation are outside it."
        ),
    ] = None,
) -> None:
    """Fine-tune with LoRA as CONFIG says; the run directory holds everything it writes."""
    prepare(training=True)
    if nproc > 1:
        from tunelab.train.launch import relaunch, without_option

        sys.exit(relaunch(nproc, without_option(sys.argv[1:], "--nproc")))
    from tunelab.config_file import load_config
    from tunelab.report import print_comparison
    from tunelab.train.run import train as run_training

    extra = [
        *([f"model.name={model}"] if model else []),
        *([f"train.budget={budget}"] if budget else []),
    ]
    settings = load_config(config, [*(overrides or []), *extra])
    result = run_training(settings, resume=resume, overwrite=overwrite, console=console)
    if not result.is_main:
        return
    if result.evaluations:
        print_comparison(console, result.evaluations)
    if result.best:
        best, metric = result.best, result.metric or settings.eval.metric
        console.print(f"best {metric} {best['score']:.4f} at step {best['step']}")
    console.print(
        f"steps {result.steps}  final train loss {result.train_loss}  "
        f"eval loss {result.eval_loss} (perplexity {result.eval_perplexity})  "
        f"{result.tokens_per_s:,.0f} real tokens/s"
    )
    print_timing(result)
    console.print(f"run directory: {result.run_dir}  (adapter: {result.run_dir}/adapter)")


def print_timing(result: Any) -> None:
    """Where the time went (load, training, final evaluation), the budget's plan against what
    was used, and advice when the run ended below its baseline."""
    timing = result.timing
    if timing:
        load, steps, final = (timing.get(k, 0) for k in ("load_s", "train_s", "final_eval_s"))
        console.print(
            f"time: loading {load:.0f} s, training {steps:.0f} s, final evaluation {final:.0f} s"
        )
    if result.budget:
        console.print(result.budget)
    if result.advice:
        console.print(f"[yellow]{result.advice}[/yellow]")


@app.command("eval")
def evaluate(
    run: RunArgument,
    data: Annotated[
        Path | None, typer.Option(help="Rows to score (default: the run's val split).")
    ] = None,
    checkpoint: CheckpointOption = None,
    compare_base: Annotated[
        bool, typer.Option(help="Score the base model on the same rows too.")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Folder name under RUN/eval/.")] = None,
    overrides: SetOption = None,
) -> None:
    """Generate answers for held-out rows and score them; writes RUN/eval/NAME/."""
    prepare()
    from tunelab.use.evaluate import run_eval

    run_eval(run, data, checkpoint, compare_base, name, overrides or [], console)


@app.command()
def predict(
    run: RunArgument,
    input: Annotated[
        Path, typer.Option("--input", help="Rows to answer (.jsonl, .json, .csv, .xlsx).")
    ],
    output: Annotated[Path, typer.Option("--output", help="Where to write (.jsonl, .csv, .xlsx).")],
    checkpoint: CheckpointOption = None,
    sheet: Annotated[str | None, typer.Option(help="Excel sheet to read.")] = None,
    text_column: Annotated[
        str | None,
        typer.Option(help="A class head reads its texts here (default: its training column)."),
    ] = None,
) -> None:
    """Answer every row of a file; the output keeps every input column plus `prediction`."""
    prepare()
    from tunelab.use.predict import predict_file

    summary = predict_file(run, input, output, checkpoint, sheet, console, text_column)
    console.print("  ".join(f"{key}: {value}" for key, value in summary.items()))


@app.command()
def chat(
    run: RunArgument,
    base: Annotated[
        bool, typer.Option(help="Talk to the base model, without the adapter.")
    ] = False,
    checkpoint: CheckpointOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 256,
    multiline: Annotated[
        bool, typer.Option(help="A message is every line up to an empty line.")
    ] = False,
    history: Annotated[
        bool, typer.Option(help="Keep the conversation; --no-history answers each alone.")
    ] = True,
) -> None:
    """Chat in the terminal with streamed answers (/reset, /system TEXT, /exit). RUN may also
    be a merged model directory or a model spec."""
    prepare()
    from tunelab.use.chat import ChatSession, run_repl
    from tunelab.use.open import open_run

    opened = open_run(run, checkpoint, base_only=base)
    session = ChatSession(opened, max_new_tokens, remember=history)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_repl(session, input, write, multiline)


@app.command()
def merge(
    run: RunArgument,
    output: Annotated[Path, typer.Option(help="Folder for the merged model.")],
    checkpoint: CheckpointOption = None,
) -> None:
    """Fold the adapter into the base: a model directory plain transformers loads."""
    prepare()
    from tunelab.use.merge import merge_run

    summary = merge_run(run, output, checkpoint)
    console.print(
        f"merged into {summary['output']}: logits match base + adapter within "
        f"{summary['max_logit_difference']:.1e}; chat template round trip checked"
    )


@app.command()
def export(
    run: RunArgument,
    output: Annotated[Path, typer.Option(help="The .gguf file to write.")],
    format: Annotated[
        str,
        typer.Option(help="gguf: one GGUF file for llama.cpp; ollama: the GGUF and a Modelfile."),
    ] = "gguf",
    dtype: Annotated[str, typer.Option(help="Weights in the file: f16, bf16 or q8_0.")] = "f16",
    checkpoint: CheckpointOption = None,
) -> None:
    """The run's model with its adapter folded in, as GGUF (tokenizer and chat template
    inside), loaded back with transformers and compared before it is reported."""
    prepare()
    from tunelab.use.export import export_run

    report = export_run(run, output, format, dtype, checkpoint)
    console.print(
        f"wrote {report['path']} ({report['architecture']}, {report['dtype']}, "
        f"{report['tensors']} tensors, {report['vocab_size']:,} tokens, pre-tokenizer "
        f"{report['pre_tokenizer']}, {report['bytes'] / 2**20:,.1f} MiB); loaded back: logits "
        f"within {report['relative_logit_difference']:.1e} of the largest (allowed "
        f"{report['allowed']:.1e}), same top token at {report['same_top_token']:.0%} of positions"
    )
    if "modelfile" in report:
        console.print(
            f"Ollama: {report['modelfile']}  (ollama create NAME -f {report['modelfile']})"
        )


@app.command()
def serve(
    runs: Annotated[list[Path], typer.Argument(help="Run directories to serve, by name.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond 127.0.0.1 needs TUNELAB_API_KEY.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    name: Annotated[
        list[str] | None, typer.Option(help="Serve a run under another id: alias=runs/X.")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow browser calls from this origin (repeatable).")
    ] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests decoded together.")] = 16,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Requests waiting beyond the batch; more get 429.")
    ] = 64,
    max_body_mb: Annotated[int, typer.Option(min=1, help="Largest request body, MiB.")] = 4,
    print_vllm: Annotated[
        bool, typer.Option(help="Print the equivalent vllm serve command and exit.")
    ] = False,
) -> None:
    """An OpenAI-compatible server for runs (and their base model): chat, completions,
    classify; the API key, if any, comes from TUNELAB_API_KEY."""
    prepare()
    if print_vllm:
        from tunelab.use.serve.models import parse_names
        from tunelab.use.serve.vllm import vllm_command

        command, warnings = vllm_command(parse_names(runs, name or []))
        for warning in warnings:
            console.print(f"[yellow]warning: {warning}[/yellow]")
        print(command)
        return
    from tunelab.use.serve.server import serve as run_server

    limits = (max_batch, max_queue, max_body_mb)
    run_server(runs, name or [], host, port, cors_origin or [], limits, console)


@app.command()
def baseline(
    target: Annotated[Path, typer.Argument(help="A run directory or a config file.")],
) -> None:
    """TF-IDF + logistic regression on the same rows: the bar a label-task LLM must clear."""
    from tunelab.use.evaluate import run_baseline

    run_baseline(target, console)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the starter files in.")],
) -> None:
    """Write a commented starter config.yaml and a tiny sample data file."""
    from tunelab.starter import write_starter

    for path in write_starter(directory):
        console.print(f"wrote {path}")
    console.print(f"next: tunelab train {directory / 'config.yaml'}")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="The run's YAML config.")],
    train_fraction: Annotated[
        str, typer.Option(help="Leading shares of the training rows, comma-separated.")
    ] = "0.25,0.5,1.0",
    overrides: SetOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace earlier runs of the sweep.")] = False,
) -> None:
    """Train and evaluate CONFIG on growing prefixes of its data; plot metric vs samples."""
    prepare(training=True)
    from tunelab.sweep import parse_fractions, run_sweep

    try:
        fractions = parse_fractions(train_fraction)
    except ValueError as error:
        raise TunelabError(str(error)) from None
    run_sweep(config, fractions, overrides or [], overwrite, console)
