# cocoon: the two commands a user needs are `make run` (set up everything, boot a microVM) and
# `make test` (set up everything, run every test). The rest are their steps.
SHELL := /bin/bash
.DEFAULT_GOAL := run

CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
GUEST_DIR := target/guest
AGENT := target/$(HOST_TARGET)/release/cocoon-agent
HOSTILE_AGENT := target/$(HOST_TARGET)/release/cocoon-hostile-agent
STATIC_AGENT_ENV := LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static"
DEB_PACKAGES := linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio xz-utils kmod \
	qemu-system-x86 linux-image-cloud-amd64 busybox-static binutils e2fsprogs \
	libseccomp-dev pkg-config runc containerd protobuf-compiler passt containernetworking-plugins iptables

.PHONY: run test deps kernel agent guest test-guest build bench lint clean-guest

## deps: install the Debian packages the build and the tests need (root, or sudo).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing $$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# The emulated KVM host: bookworm's qemu 7.2 freezes or panics in nested SVM a few times per
	@# hundred boots; bookworm-backports' 10.0 does not (README "Known faults of the emulated host").
	@qemu=$$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'); \
	if [ "$${qemu:-0}" -lt 10 ] && grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then \
		echo "make deps: qemu $${qemu:-none} here; installing qemu 10 from bookworm-backports for the emulated KVM host"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo 'deb http://deb.debian.org/debian bookworm-backports main' | $$sudo tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86; \
	fi

## kernel: build (or reuse from ~/.cache/cocoon) the guest kernel.
kernel: deps
	@mkdir -p $(GUEST_DIR)
	@dir=$$(guest-image/build-kernel.sh) && cp -f "$$dir/bzImage" $(GUEST_DIR)/ && strip -o $(GUEST_DIR)/vmlinux "$$dir/vmlinux"

## agent: the guest agent, statically linked (the guest has no libraries; libseccomp included).
agent: deps
	$(STATIC_AGENT_ENV) $(CARGO) build --release -p cocoon-agent --target $(HOST_TARGET)

## guest: kernel + initramfs holding the agent; prints their sha256.
guest: kernel agent
	strip -o $(GUEST_DIR)/cocoon-agent $(AGENT)
	$(CARGO) run -q -p cocoon-guest-image -- --agent $(GUEST_DIR)/cocoon-agent --out $(GUEST_DIR)/initramfs.cpio >/dev/null
	@cd $(GUEST_DIR) && sha256sum bzImage vmlinux initramfs.cpio | tee SHA256SUMS

## test-guest: for the tests only, an initramfs whose agent attacks the host through a volume's
## copy-back (tests/hostile-agent; the container suite checks every attack is refused).
test-guest: guest
	$(STATIC_AGENT_ENV) $(CARGO) build --release -p cocoon-hostile-agent --target $(HOST_TARGET)
	strip -o $(GUEST_DIR)/hostile-agent $(HOSTILE_AGENT)
	$(CARGO) run -q -p cocoon-guest-image -- --agent $(GUEST_DIR)/hostile-agent --out $(GUEST_DIR)/hostile-initramfs.cpio >/dev/null

## build: the host binaries (VMM, harness, bench).
build:
	$(CARGO) build --workspace --bins

## run: the main job. Sets everything up and runs a container from the built-in default image in
## its own microVM with `cocoon run`; where the CPU has no vmx/svm, inside the emulated KVM host
## (`cocoon run --emulated`).
EMULATED := $(shell grep -qwE 'vmx|svm' /proc/cpuinfo || echo --emulated)
run: guest build
	target/debug/cocoon run $(EMULATED) --rm default -- sh -c "echo hello from a container in a cocoon microVM; uname -sr; id; hostname"; \
	  status=$$?; echo "cocoon run exit status: $$status"; exit $$status

## test: every test, end-to-end ones under real KVM included (they may not skip here).
test: guest test-guest build
	COCOON_REQUIRE_E2E=1 $(CARGO) test --workspace

## bench: boot latency and VMM memory, cocoon vs qemu -M microvm, side by side in one run
## (the VMM measured is the release build).
bench: guest build
	$(CARGO) build --release -p cocoon-vmm
	COCOON_VMM=target/release/cocoon-vmm target/debug/cocoon-bench

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-guest:
	rm -rf $(GUEST_DIR)
