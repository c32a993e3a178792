"""Stream text from a checkpoint written by train_bpe.py, once or interactively.

    python sample_bpe.py --ckpt bpe_best.pt --prompt "ROMEO:" --temperature 0.8 --top_k 80
    python sample_bpe.py --ckpt bpe_best.pt --interactive          # prompt after prompt, one load
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import cli
from checkpoint import CheckpointError, load_model
from model import use_decode_layout
from sampling import SETTABLE, Settings, generate_text, generators

EXAMPLES = """examples:
  python sample_bpe.py --ckpt bpe_best.pt --prompt "ROMEO:" --temperature 0.8 --top_k 80
  python sample_bpe.py --ckpt bpe_best.pt --prompt "KING:" --temperature 0   # greedy, deterministic
  python sample_bpe.py --ckpt bpe_best.pt --prompt_file start.py --stop $'\\ndef ' --temperature 0.7
  python sample_bpe.py --ckpt bpe_best.pt --prompt "JULIET:" --num_samples 4 --min_p 0.05 --repetition_penalty 1.2
  python sample_bpe.py --ckpt bpe_best.pt --interactive --stop $'\\n\\n'      # type prompts; /help lists commands
"""

HELP = """commands (a line that starts with / is a command; anything else is a prompt):
  /help                      this list
  /show                      the current settings
  /set NAME VALUE            change a setting: {settable}
  /stop TEXT                 also end a sample where TEXT appears (\\n for a newline); /stop alone: clear them
  /chat on|off               keep the conversation as context across turns (now: {chat})
  /reset                     forget the conversation
  /quit                      leave (so does Ctrl-D); Ctrl-C stops the current sample
  \"\"\"                        on a line of its own: start a prompt of several lines (code!); end it with \"\"\" again"""


def build_parser() -> cli.OneLineParser:
    p = cli.OneLineParser(prog="sample_bpe.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
                          formatter_class=cli.HelpFormatter)
    defaults = Settings()
    p.add_argument("--ckpt", default="bpe_best.pt", help="checkpoint written by train_bpe.py")
    g = p.add_argument_group("prompt")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", type=cli.utf8_text, help="text to continue (empty: start from <bos>)")
    src.add_argument("--prompt_file", type=Path, help="a UTF-8 file whose text is the prompt (a file of code, say)")
    g.add_argument("--interactive", action="store_true",
                   help="load once, then read prompts from the terminal (or stdin) and stream each continuation")
    g.add_argument("--chat", action="store_true",
                   help="with --interactive: keep the conversation as context across turns")
    g = p.add_argument_group("sampling (applied in this order: repetition penalty, temperature, top-k, top-p, "
                             "min-p, as transformers does)")
    g.add_argument("--max_new_tokens", type=cli.bounded_int(1, 10**9), default=defaults.max_new_tokens,
                   help="tokens to generate per sample")
    g.add_argument("--temperature", type=cli.finite_float, default=defaults.temperature,
                   help="randomness; 0 = always the likeliest token")
    g.add_argument("--top_k", type=cli.bounded_int(0, 10**9), default=defaults.top_k,
                   help="sample among the k likeliest tokens (0 = all)")
    g.add_argument("--top_p", type=cli.finite_float, default=defaults.top_p,
                   help="nucleus sampling: smallest set with this mass (1 = off)")
    g.add_argument("--min_p", type=cli.finite_float, default=defaults.min_p,
                   help="keep only tokens at least this likely relative to the likeliest one (0 = off; 0.05-0.1 "
                        "is usual)")
    g.add_argument("--repetition_penalty", type=cli.finite_float, default=defaults.repetition_penalty,
                   help="divide a positive logit (multiply a negative one) of every token already in the text by "
                        "this (the CTRL rule; 1 = off, 1.1-1.3 is usual)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", type=cli.utf8_text,
                   help="end a sample where TEXT appears (repeatable; TEXT is not printed); e.g. $'\\n\\n'")
    g.add_argument("--stop_at_eos", action="store_true", help="end a sample at the end-of-document token")
    g.add_argument("--num_samples", type=cli.bounded_int(1, 1024), default=1,
                   help="samples to draw, as one batch; the first streams, the others follow when all are done")
    g.add_argument("--seed", type=cli.seed_int, default=defaults.seed,
                   help="random seed: sample i draws from seed + i, so each is the same alone or in a batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    return p


def settings_from(args) -> Settings:
    return Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                    stop=tuple(args.stop), stop_at_eos=args.stop_at_eos)


def check_args(args) -> str | None:
    problem = settings_from(args).problem()
    if problem:
        return f"--{problem[0]} {problem[1]}"
    if args.chat and not args.interactive:
        return "--chat keeps a conversation, which needs --interactive"
    if args.interactive and (args.prompt or args.prompt_file or args.num_samples > 1):
        return "--interactive reads its prompts as you type them: drop --prompt, --prompt_file and --num_samples"
    return cli.device_problem(args.device)


def read_prompt_file(path: Path) -> str:
    if path.is_dir():
        raise CheckpointError(f"--prompt_file {path} is a folder: pass a text file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"--prompt_file {path} does not exist: pass a UTF-8 text file") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"--prompt_file {path} is not UTF-8 text: convert it (iconv -t UTF-8)") from None
    except OSError as exc:
        raise CheckpointError(f"--prompt_file {path} cannot be read ({exc.strerror or exc})") from None


class Sampler:
    """A loaded model and its tokenizer, ready to continue prompts."""

    def __init__(self, model, tok, specials):
        self.model, self.tok, self.specials = model, tok, specials

    @property
    def context(self) -> int:
        return self.model.config.block_size

    def encode(self, prompt: str) -> list[int]:
        return self.tok.encode(prompt, add_special_tokens=False).ids if prompt else [self.specials.start]

    def write(self, prompt_ids: list[int], prompt: str, settings: Settings, num_samples: int = 1,
              gens=None, out=None) -> list[str]:
        """Streams the first sample after the prompt, then the others; returns every sample's new text."""
        out = out or sys.stdout
        texts = [""] * num_samples
        # The text shows progress on a terminal; when stdout is a file, a bar on stderr does instead
        # (after a second, so a quick sample or a quick failure leaves stderr clean).
        bar = tqdm(total=settings.max_new_tokens, desc="sampling", unit=" tok", leave=False, delay=1.0,
                   disable=out.isatty() if hasattr(out, "isatty") else True)
        events = generate_text(self.model, self.tok, self.specials, prompt_ids, settings, num_samples, gens)
        try:
            out.write(prompt)
            for row, text in events:
                texts[row] += text
                if row == 0:
                    out.write(text)
                    out.flush()
                    bar.update(1)
        finally:
            bar.close()
        for row in range(1, num_samples):
            out.write("\n" + "-" * 40 + "\n" + prompt + texts[row])
        out.write("\n")
        out.flush()
        return texts


def run(args) -> int:
    device = cli.resolve_device(args.device)
    model, tok, specials, _ = load_model(args.ckpt, device)
    if device.type == "cpu":
        use_decode_layout(model)  # one-token steps read the weights faster and use every core (model.py)
    sampler = Sampler(model, tok, specials)
    settings = settings_from(args)
    if args.interactive:
        return Session(sampler, settings, chat=args.chat).loop(sys.stdin, sys.stdout)
    prompt = read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    ids = sampler.encode(prompt)
    if len(ids) > sampler.context:
        flag = "--prompt_file" if args.prompt_file else "--prompt"
        raise CheckpointError(f"{flag} is {len(ids)} tokens, longer than the model's context of {sampler.context}: "
                              f"shorten it")
    sampler.write(ids, prompt, settings, args.num_samples)
    return 0


class Session:
    """The interactive loop: prompts, commands and settings, one model load for all of them."""

    def __init__(self, sampler: Sampler, settings: Settings, chat: bool = False):
        self.sampler, self.settings, self.chat = sampler, settings, chat
        self.conversation = ""  # with chat on: every prompt and reply so far
        self.gens = generators(settings, 1, sampler.model.lm_head.weight.device)

    def say(self, text: str) -> None:
        """A line for the user (not part of any sample): on stderr, so stdout holds only the text."""
        print(text, file=sys.stderr, flush=True)

    def read(self, stdin, terminal: bool, marker: str = "> ") -> str | None:
        """One line, without its newline; None at the end of input (Ctrl-D)."""
        if terminal:
            try:
                return input(marker)
            except EOFError:
                return None
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def loop(self, stdin, out) -> int:
        terminal = stdin.isatty() and out.isatty()
        self.say(f"interactive: type a prompt and press Enter; /help lists the commands; Ctrl-D leaves "
                 f"(context {self.sampler.context} tokens{', chat on' if self.chat else ''})")
        while True:
            try:
                line = self.read(stdin, terminal)
                if line is None or line.strip() in ("/quit", "/exit"):
                    return 0
                if line.strip() == '"""':
                    line = self.read_block(stdin, terminal)
                    if line is None:
                        return 0
                elif line.startswith("/"):
                    self.command(line.strip())
                    continue
                self.prompt(line, out)
            except KeyboardInterrupt:  # Ctrl-C: stop this sample (or this line), not the session
                out.write("\n")
                self.say("(stopped; Ctrl-D or /quit leaves)")

    def read_block(self, stdin, terminal: bool) -> str | None:
        lines = []
        while (line := self.read(stdin, terminal, marker="... ")) is not None:
            if line.strip() == '"""':
                return "\n".join(lines)
            lines.append(line)
        return None

    def prompt(self, text: str, out) -> None:
        if not text.strip() and not self.chat:
            self.say('empty prompt: type some text (a prompt of several lines goes between two """ lines), or /help')
            return
        joint = "\n" if self.conversation and not self.conversation.endswith("\n") else ""
        full = self.conversation + joint + text if self.chat else text
        ids = self.sampler.encode(full)
        if len(ids) > self.sampler.context and not self.chat:  # a chat keeps its newest tokens (context shift)
            self.say(f"the prompt is {len(ids)} tokens, longer than the model's context of {self.sampler.context}: "
                     f"shorten it")
            return
        [reply] = self.sampler.write(ids, text, self.settings, gens=self.gens, out=out)
        if self.chat:
            self.conversation = full + reply

    def command(self, line: str) -> None:
        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if name == "help":
            self.say(HELP.format(settable=", ".join(SETTABLE), chat="on" if self.chat else "off"))
        elif name == "show":
            shown = " ".join(f"{k}={getattr(self.settings, k)}" for k in SETTABLE)
            self.say(f"{shown} stop={list(self.settings.stop)} stop_at_eos={self.settings.stop_at_eos} "
                     f"chat={'on' if self.chat else 'off'}")
        elif name == "set":
            self.set(rest)
        elif name == "stop":
            stops = (*self.settings.stop, rest.replace("\\n", "\n").replace("\\t", "\t")) if rest else ()
            self.settings = replace(self.settings, stop=stops)
            self.say(f"stop strings: {list(stops) or 'none'}")
        elif name == "chat":
            if rest not in ("on", "off"):
                self.say("/chat takes on or off")
                return
            self.chat = rest == "on"
            self.conversation = ""
            self.say(f"chat {rest}")
        elif name == "reset":
            self.conversation = ""
            self.say("conversation forgotten")
        else:
            self.say(f"unknown command {line.split()[0]!r}: /help lists the commands")

    def set(self, rest: str) -> None:
        name, _, value = rest.partition(" ")
        try:
            settings = self.settings.with_value(name, value.strip())
        except ValueError as exc:
            self.say(str(exc))
            return
        problem = settings.problem()
        if problem:
            self.say(f"{problem[0]} {problem[1]}; kept {problem[0]}={getattr(self.settings, problem[0])}")
            return
        self.settings = settings
        if name == "seed":
            self.gens = generators(settings, 1, self.sampler.model.lm_head.weight.device)
        self.say(f"{name}={getattr(settings, name)}")


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here is a KeyboardInterrupt
    stdout_open = cli.prepare_streams()
    args = build_parser().parse_checked(argv, check_args)
    try:
        if not stdout_open:
            raise CheckpointError("stdout is closed, so the sample has nowhere to go: redirect it (> sample.txt)")
        with torch.inference_mode():
            return run(args)
    except CheckpointError as exc:
        print(f"sample_bpe.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while streaming: end the line, no traceback
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        cli.silence_stdout()
        return 0
    except OSError as exc:  # stdout cannot be written: a full disk, /dev/full
        if exc.filename is not None:  # not stdout: a genuine bug to report
            raise
        cli.silence_stdout()
        print(f"sample_bpe.py: error: cannot write the sample to stdout ({exc.strerror or exc})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
