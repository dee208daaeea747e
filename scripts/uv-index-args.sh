# Sourced by scripts/setup.sh and scripts/lock.sh: the package indexes uv should use, in `args`.
# uv does not read pip's configuration, so pip's configured find-links / extra index URLs (local
# wheel mirrors) are handed to it; without them uv would download ~3 GB of CUDA torch instead.
args=()
for link in $("$PYTHON" -m pip config get global.find-links 2>/dev/null || true); do
  [ -e "${link#file://}" ] && args+=(--find-links "$link")
done
for index in $("$PYTHON" -m pip config get global.extra-index-url 2>/dev/null || true); do
  [ -e "${index#file://}" ] && args+=(--extra-index-url "$index")
done
# Local mirrors hold only some versions; let uv take each package's best match from any index.
[ ${#args[@]} -gt 0 ] && args+=(--index-strategy unsafe-best-match)
true
