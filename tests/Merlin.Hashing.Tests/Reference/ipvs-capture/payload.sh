#!/bin/bash
# Runs inside the guest (see run.sh): one IPVS service per scenario, 120 SYNs from known sources,
# and the kernel's choices from ipvsadm -Lcn. Each scenario uses its own source ports, so the
# connection entries of earlier scenarios never mix in.
OUT=/vm-out
cd "$(dirname "$0")"
ip addr add 198.18.0.1/32 dev lo
for i in 21 22 23 24 25; do ip addr add 198.18.0.$i/32 dev lo; done
for i in $(seq 1 40); do ip addr add 198.18.100.$i/32 dev lo; done
uname -r > $OUT/kernel
n=0
run() {  # label sched flags "rs:w rs:w …" [drain-rs]
  local label=$1 sched=$2 flags=$3 servers=$4 drain=${5:-}
  n=$((n + 1))
  ipvsadm -C
  ipvsadm -A -t 198.18.0.1:80 -s $sched ${flags:+-b $flags}
  for sw in $servers; do ipvsadm -a -t 198.18.0.1:80 -r 198.18.0.${sw%:*}:80 -g -w ${sw#*:}; done
  [ -n "$drain" ] && ipvsadm -e -t 198.18.0.1:80 -r 198.18.0.$drain:80 -g -w 0
  ipvsadm -Ln > $OUT/$label.svc
  python3 flows.py $((20000 + n * 100))
  ipvsadm -Lcn | grep ":$((20000 + n * 100))\|:$((20001 + n * 100))\|:$((20007 + n * 100))" > $OUT/$label.conns
  echo "$label $n $servers drain=$drain" >> $OUT/index
}
run mh_port mh mh-port "21:1 22:1 23:1"
run mh_addr mh "" "21:1 22:1 23:1"
run mh_port5 mh mh-port "23:1 21:1 22:1 25:1 24:1"
run mh_w mh mh-port "21:3 22:1 23:2"
run mh_drain mh mh-port,mh-fallback "21:1 22:1 23:1" 22
run mh_drain_nofb mh mh-port "21:1 22:1 23:1" 22
run sh_port sh sh-port "21:1 22:1 23:1"
run sh_w sh "" "21:2 22:1 23:3"
run sh_drain sh sh-port,sh-fallback "21:2 22:2 23:2" 22
ls $OUT
