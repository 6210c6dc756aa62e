"""``ntm SUBCOMMAND --help`` states each default once and never "(default: None)"."""
import re

import pytest

from ntm_engine.cli import SUBCOMMANDS, build_parser


def help_text(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name].format_help()


@pytest.mark.parametrize("name", ["train", "sample", "eval", "distill", "compare", "export",
                                  "score"])
def test_each_default_is_said_once(name):
    text = help_text(name)
    assert "(default: None)" not in text and "(default: False)" not in text
    # one entry per option: the lines from one "  --opt" to the next
    entries = re.split(r"\n  (?=-)", text)
    twice = [e.split()[0] for e in entries if len(re.findall(r"\(default: ", e)) > 1]
    assert not twice, f"options whose help says 'default' twice: {twice}"


def test_every_subcommand_is_listed():
    assert len(SUBCOMMANDS) == 7
    assert "{train,sample,eval,distill,compare,export,score}" in build_parser().format_help()


def test_the_dataset_list_names_each_dataset_once():
    line = " ".join(help_text("train").split("--dataset DATASET", 1)[1].split())
    names = line.split("training data: ", 1)[1].split(", a folder")[0].split(", ")
    assert len(names) == len(set(names)) and "digits" in names
