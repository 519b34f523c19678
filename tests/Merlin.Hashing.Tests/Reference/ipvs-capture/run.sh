#!/bin/bash
# One-off capture of the kernel's own sh/mh choices for ../ipvs-6.1-observed.txt (not run by CI):
# boots Debian's stock kernel under qemu (TCG; about two minutes here), runs payload.sh inside,
# and leaves ipvsadm -Lcn listings in $WORKDIR/out. Needs root, qemu-system-x86, busybox-static,
# ipvsadm, kmod, cpio. Adapted from shared/reference/ipvs-vm-recipe.sh.
set -euo pipefail
P=${WORKDIR:-/root/merlin-hashing-vm}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$P"; cp "$HERE/payload.sh" "$HERE/flows.py" "$P/"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
KVER=${KPKG#linux-image-}
KR=$P/kroot
if [ ! -f "$KR/boot/vmlinuz-$KVER" ]; then
  mkdir -p "$P/dl"; (cd "$P/dl" && apt-get download "$KPKG" >/dev/null 2>&1)
  rm -rf "$KR"; dpkg-deb -x "$P/dl/${KPKG}_"*.deb "$KR"; depmod -b "$KR" "$KVER"
fi
grep -E "CONFIG_IP_VS_(MH_TAB_INDEX|SH_TAB_BITS)" "$KR/boot/config-$KVER" > $P/kconfig || true
R=$P/initrd-root; rm -rf "$R"
mkdir -p "$R"/{bin,proc,sys,dev,tmp,mnt/host,mnt/upper,newroot,lib/modules}
cp /bin/busybox "$R/bin/"
for a in sh mount insmod mkdir cat echo poweroff chroot ip cut sed sync; do ln -s busybox "$R/bin/$a"; done
: > "$R/modlist"
for f in $(for m in ip_vs ip_vs_sh ip_vs_mh virtio_pci 9pnet_virtio 9p overlay; do modprobe -d "$KR" -S "$KVER" --show-depends "$m"; done | awk '$1=="insmod"{print $2}' | awk '!s[$0]++'); do
  m=$(basename "$f"); m=${m%%.ko*}
  case "$f" in *.xz) xz -dc "$f";; *.zst) zstd -dc "$f";; *) cat "$f";; esac > "$R/lib/modules/$m.ko"
  echo "$m" >> "$R/modlist"
done
cat > "$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modlist); do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /mnt/host
mount -t tmpfs -o size=1g tmpfs /mnt/upper; mkdir -p /mnt/upper/u /mnt/upper/w
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/upper/u,workdir=/mnt/upper/w /newroot
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev; mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/vm-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/vm-out
chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/bash PAYLOAD
echo $? > /newroot/vm-out/rc
sync; poweroff -f
INIT
chmod +x "$R/init"
sed -i "s|PAYLOAD|$P/payload.sh|" "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$P/initrd.gz"
rm -rf "$P/out"; mkdir -p "$P/out"
timeout 900 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1024 \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -kernel "$KR/boot/vmlinuz-$KVER" -initrd "$P/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$P/out",mount_tag=out,security_model=none > "$P/guest.log" 2>&1
echo "rc=$(cat $P/out/rc 2>/dev/null || echo none)"
