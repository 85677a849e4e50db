# run_code driver for Python, started by sandboxd as a long-lived child.
# Requests: one JSON object per line on stdin ({"code": "..."}).
# Replies: JSON lines on the descriptor named by SANDBOXD_PROTO_FD:
#   {"type": "result", "text": ..., "data": {...}}
#   {"type": "error", "name": ..., "value": ..., "traceback": ...}
#   {"type": "done", "status": "ok" | "error"}
# User output goes to the process's own stdout and stderr.
import ast
import json
import os
import sys
import traceback

_proto = os.fdopen(int(os.environ.pop("SANDBOXD_PROTO_FD")), "w", buffering=1)
_requests = os.fdopen(os.dup(0), "r")
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
sys.stdin = open(0, "r")


def _send(obj):
    _proto.write(json.dumps(obj) + "\n")
    _proto.flush()


def _rich(value):
    data = {}
    for method, mime in (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"),
                         ("_repr_svg_", "image/svg+xml"), ("_repr_png_", "image/png"),
                         ("_repr_json_", "application/json")):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                out = fn()
            except Exception:
                continue
            if out is None:
                continue
            if isinstance(out, bytes):
                import base64
                out = base64.b64encode(out).decode()
            data[mime] = out
    return data


_ns = {"__name__": "__main__", "__builtins__": __builtins__}


def _run(code):
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), _ns)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _ns)
            if value is not None:
                _ns["_"] = value
                _send({"type": "result", "text": repr(value), "data": _rich(value)})
        return "ok"
    except BaseException as exc:  # noqa: B902 - the cell's errors, KeyboardInterrupt and SystemExit included
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        _send({"type": "error", "name": type(exc).__name__, "value": str(exc), "traceback": text})
        return "error"
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass


while True:
    try:
        line = _requests.readline()
    except KeyboardInterrupt:
        continue
    if not line:
        break
    try:
        request = json.loads(line)
    except ValueError:
        continue
    status = _run(request.get("code", ""))
    _send({"type": "done", "status": status})
