# run_code driver for bash, started by sandboxd as a long-lived child.
# Requests: the code of each cell terminated by a NUL byte on stdin.
# Replies: JSON lines on the descriptor named by SANDBOXD_PROTO_FD: {"type":"done",...}.
# Cells run in this shell (variables, functions and cwd persist), with stdin from /dev/null.
__sbx_proto=$SANDBOXD_PROTO_FD
unset SANDBOXD_PROTO_FD
trap ':' INT
while IFS= read -r -d '' __sbx_code; do
  eval "$__sbx_code" </dev/null
  __sbx_rc=$?
  if [ "$__sbx_rc" -eq 0 ]; then __sbx_status=ok; else __sbx_status=error; fi
  printf '{"type":"done","status":"%s","exit_code":%d}\n' "$__sbx_status" "$__sbx_rc" >&"$__sbx_proto"
done
