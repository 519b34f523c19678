# The packet path in the qemu guest (tests/vm/ipvs-guest), the one kernel here with IPVS:
#   dotnet build -c Release bench/Merlin.PacketPath
#   tests/vm/ipvs-guest --script bench/Merlin.PacketPath/ipvs-guest.sh --timeout 3000
# The guest's CPU is emulated (TCG), so only ratios measured inside it mean anything, and at a lower rate
# than on the host (PP_RATE, default 2,000 packets/s). The report lands in .vm/results/packet-path.txt.
set -euo pipefail
# tests/vm/ipvs-guest runs this from the repository root.
echo "guest: kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
dotnet bench/Merlin.PacketPath/bin/Release/net10.0/Merlin.PacketPath.dll --ipvs \
  --rate "${PP_RATE:-2000}" --seconds "${PP_SECONDS:-3}" --rounds "${PP_ROUNDS:-3}" --services "${PP_SERVICES:-1000}" \
  2>&1 | tee "${MERLIN_VM_OUT:-/tmp}/packet-path.txt"
