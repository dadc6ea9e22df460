"""Kaldi text tables (`key value...` per line): wav.scp, utt2spk, spk2utt, utt2dur, frames.scp, ...

Every text table, list and trials file of avtk is read through `text_lines` (or the helpers built on
it), by one rule, so that a key is exactly what a person sees and what `awk`/`sort` see:

* The text is UTF-8. A byte-order mark at the start of the file and a carriage return at the end of a
  line (CRLF line endings) are accepted and dropped.
* Rejected, naming file:line and the column: bytes that are not UTF-8; any other control character
  (a lone CR, NUL, form feed, ...); an invisible Unicode format character (zero-width space U+200B,
  word joiner, a BOM after the start, bidi marks, soft hyphen: category Cf); white space other than the
  ASCII space and tab (no-break space U+00A0, U+2028, ...), which Python would split a line on but awk
  and Kaldi would not. In free text (a `text` file's transcript) only the key is held to the last two.

Fields are separated by runs of spaces and tabs.
"""
import re
import unicodedata
from dataclasses import dataclass

import yaml

from avtk.errors import AvtkError
from avtk.io.atomic import atomic_open, note_input

_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_BOM = "\ufeff"
_FIELD_SEP = re.compile(r"[ \t]")


def _char_name(c):
    return f"U+{ord(c):04X} ({unicodedata.name(c, unicodedata.category(c))})"


def line_problem(text, keys_only=False):
    """Why the rule rejects a decoded line (CR/LF already removed), or None when it is clean.

    keys_only: free text after the first field may hold format characters and Unicode spaces (control
    characters are rejected everywhere)."""
    bad = _ASCII_CONTROL.search(text)
    if bad:
        c = bad.group()
        what = "carriage return inside a line" if c == "\r" else f"control character {_char_name(c)}"
        return f"{what} at column {bad.start() + 1}"
    if text.isascii():
        return None
    end = len(text)
    if keys_only:
        stripped = text.lstrip(" \t")
        key = _FIELD_SEP.split(stripped, 1)[0]  # fields end at ASCII space or tab only, as awk's do
        end = len(text) - len(stripped) + len(key)
    for m in _NON_ASCII.finditer(text):
        c = m.group()
        cat = unicodedata.category(c)
        if cat == "Cc":
            return f"control character {_char_name(c)} at column {m.start() + 1}"
        if m.start() >= end:
            continue
        if cat == "Cf":
            return f"invisible character {_char_name(c)} at column {m.start() + 1}"
        if cat in ("Zs", "Zl", "Zp"):
            return f"white space other than space or tab, {_char_name(c)}, at column {m.start() + 1}"
    return None


def decode_lines(raw_lines, keys_only=False):
    """Apply the module's rule to an iterable of byte lines (a file opened "rb", a pipe).

    Yields (lineno, text, problem) for every line: text is the decoded line without its line end (a
    BOM at the start of line 1 removed), problem None, or text None and problem a message such as
    "not UTF-8 text (byte 0xe9 at column 4)" (the caller adds the file name and line number)."""
    for lineno, raw in enumerate(raw_lines, 1):
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            col = len(raw[:err.start].decode("utf-8", "replace")) + 1
            yield lineno, None, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {col})"
            continue
        if lineno == 1 and text.startswith(_BOM):
            text = text[1:]
        problem = line_problem(text, keys_only)
        yield lineno, (None if problem else text), problem


def open_binary(path, what=""):
    """The file opened "rb"; an unreadable file is an AvtkError ("cannot read {what}{path}: reason"). The file
    is an input of the running command: no atomic writer of it replaces it (`avtk.io.atomic.note_input`)."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise AvtkError(f"cannot read {what}{path}: {err.strerror or err}") from None
    note_input(path)
    return f


def text_lines(path, what="", keys_only=False):
    """Yield (lineno, text) for every line of a text file read by the module's rule, blank lines
    included; a line the rule rejects is an AvtkError "{path}:{lineno}: {why}: {line!r}", an unreadable
    file one saying "cannot read {what}{path}"."""
    with open_binary(path, what) as f:
        for lineno, text, problem in decode_lines(f, keys_only):
            if problem:
                raise AvtkError(f"{path}:{lineno}: {problem}")
            yield lineno, text


@dataclass(frozen=True)
class Line:
    key: str
    value: str  # everything after the key, stripped; may contain spaces (pipes, spk2utt lists, paths)
    lineno: int


def read_text(path, what="", keys_only=False):
    """The whole file as one str read by the module's rule (each line ending in "\n"): for YAML and
    JSON files. Errors as for `text_lines`."""
    return "".join(text + "\n" for _, text in text_lines(path, what, keys_only))


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last one silently)."""

    source = "YAML"

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise AvtkError(f"{self.source}:{line}: duplicate key {key!r} (first on line {first[key]})")
                first[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                pass
        return super().construct_mapping(node, deep)


def yaml_problem(err):
    """A yaml.YAMLError in one line: its problem and, when known, `at line L, column C`."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def parse_yaml(text, source):
    """The document of YAML `text` (read by the module's rule, `read_text`) by yaml.SafeLoader, with
    a key repeated in any mapping an AvtkError "{source}:{line}: duplicate key 'k' (first on line L)" (the
    message of `read_dict`), and invalid YAML one "{source}: not valid YAML: {problem} at line L, column C"."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise AvtkError(f"{source}: not valid YAML: {yaml_problem(err)}") from None
    finally:
        loader.dispose()


def read_yaml(path, what=""):
    """The YAML document of a file: every YAML file of avtk (training config, flat `--config`) is read here.
    The text is read by the module's rule with keys held to it (`read_text(keys_only=True)`: errors name
    file:line and column), then parsed by `parse_yaml` (duplicate keys and invalid YAML name file:line)."""
    return parse_yaml(read_text(path, what, keys_only=True), path)


def numbered_fields(path, what="", keys_only=False):
    """Yield (lineno, fields, text) for every non-blank line of a text file read by the module's rule
    (`text_lines`): fields split on spaces and tabs, text the line stripped."""
    for lineno, text in text_lines(path, what, keys_only):
        fields = text.split()
        if fields:
            yield lineno, fields, text.strip()


def read_lines(path, min_fields=2):
    """Every non-empty line of a table as Line(key, value, lineno); a malformed line names file:line."""
    lines = []
    for lineno, fields, text in numbered_fields(path):
        if len(fields) < min_fields:
            raise AvtkError(f"{path}:{lineno}: malformed line (expected at least {min_fields} fields): {text!r}")
        rest = text.split(maxsplit=1)
        lines.append(Line(fields[0], rest[1] if len(rest) > 1 else "", lineno))
    return lines


def duplicate_key(path, lineno, key, first):
    """The AvtkError of a key seen twice in one table: "{path}:{lineno}: duplicate key 'k' (first on line N)"."""
    return AvtkError(f"{path}:{lineno}: duplicate key {key!r} (first on line {first})")


def read_dict(path, min_fields=2):
    """A table as {key: value}; a duplicate key is an error naming file:line (`duplicate_key`)."""
    table, first = {}, {}
    for line in read_lines(path, min_fields):
        if line.key in table:
            raise duplicate_key(path, line.lineno, line.key, first[line.key])
        table[line.key] = line.value
        first[line.key] = line.lineno
    return table


def write_dict(path, table, sort=True, replaces_input=False):
    """Write {key: value} (lists are joined by spaces; an empty value leaves the key alone), atomically,
    sorted by key (C order). An input of the running command is not replaced unless `replaces_input`
    (`avtk.io.atomic.atomic_open`)."""
    items = table.items() if hasattr(table, "items") else table
    if sort:
        items = sorted(items, key=lambda kv: kv[0])
    with atomic_open(path, "w", replaces_input=replaces_input, encoding="utf-8") as f:
        for key, value in items:
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")


def utt2spk_to_spk2utt(utt2spk):
    """{utt: spk} -> {spk: [utt, ...]} with utterances in sorted order."""
    spk2utt = {}
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return dict(sorted(spk2utt.items()))


def main(argv=None):
    """`python -m avtk.data.table [--unique] [--fields N|N+] [FILE]`: print FILE (default: standard input)
    as read by the module's rule (BOM and CRs dropped), for shell helpers (utils/*) that read tables with
    awk. --unique: a key (first field) seen twice is an error (`duplicate_key`, as `read_dict`); --fields: a
    non-blank line of other than N (or fewer than N) fields is "FILE:LINE: malformed line (expected N
    fields): 'text'". A rejected line is one message naming file:line on standard error and exit status 1;
    the output is then incomplete, so callers write it to a temporary file, not to their output."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    unique = "--unique" in args
    args = [a for a in args if a != "--unique"]
    fields = None
    if "--fields" in args:
        i = args.index("--fields")
        fields = args[i + 1]
        del args[i:i + 2]
    path = args[0] if args else "-"
    name = "standard input" if path == "-" else path
    first = {}
    try:
        if path == "-":
            lines = _stdin_lines(decode_lines(sys.stdin.buffer))
        else:
            lines = text_lines(path)
        for lineno, text in lines:
            parts = text.split()
            if parts and fields is not None:
                least = fields.endswith("+")
                want = int(fields.rstrip("+"))
                if len(parts) < want or (not least and len(parts) != want):
                    raise AvtkError(f"{name}:{lineno}: malformed line (expected {'at least ' if least else ''}{want} "
                                    f"fields): {text.strip()!r}")
            if parts and unique:
                if parts[0] in first:
                    raise duplicate_key(name, lineno, parts[0], first[parts[0]])
                first[parts[0]] = lineno
            sys.stdout.write(text + "\n")
    except AvtkError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def _stdin_lines(decoded):
    """(lineno, text) of `decode_lines` output, a rejected line an AvtkError naming standard input."""
    for lineno, text, problem in decoded:
        if problem:
            raise AvtkError(f"standard input:{lineno}: {problem}")
        yield lineno, text


if __name__ == "__main__":
    raise SystemExit(main())
