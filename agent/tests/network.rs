//! The agent's network operations against this machine's kernel, in a network namespace of the
//! test's own thread (a namespace is per thread; `ip`, run from it, sees the same one): a veth
//! found by its MAC, renamed, addressed and brought up, its routes and a neighbour. Root only;
//! skipped, saying so, where the namespace or the veth cannot be made.
//!
//! A test binary of its own: these tests unshare a thread's network namespace and run `ip`,
//! which has no business beside the container host tests and libcontainer's clones.

use std::net::Ipv4Addr;
use std::process::Command;

use cocoon_protocol::guest_network::{Interface, Neighbour, Route};
use cocoon_protocol::net_config::MacAddress;

use cocoon_agent::network::{add_neighbours, update_interface, update_routes};

fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `test` in a thread of its own network namespace with a veth pair (`cocoon-a`, whose MAC
/// is 02:00:00:00:00:2a, and its peer), or says why it cannot.
fn in_own_namespace(test: impl FnOnce() + Send + 'static) {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to make a network namespace");
        return;
    }
    let result = std::thread::spawn(move || {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("skipped: unshare(CLONE_NEWNET): {e}");
            return;
        }
        let made = Command::new("ip")
            .args(
                "link add cocoon-a address 02:00:00:00:00:2a type veth peer name cocoon-b"
                    .split(' '),
            )
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: this kernel cannot make a veth pair");
            return;
        }
        ip("link set cocoon-b up");
        test();
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn an_interface_found_by_its_mac_is_renamed_addressed_and_up_with_its_routes() {
    in_own_namespace(|| {
        ip("addr add 192.0.2.9/24 dev cocoon-a");
        let interface = Interface {
            mac: "02:00:00:00:00:2a".parse().unwrap(),
            name: "eth0".into(),
            addresses: vec!["10.88.0.5/16".parse().unwrap()],
            mtu: 1400,
        };
        update_interface(&interface).unwrap();
        let link = ip("-o link show eth0");
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
        let addresses = ip("-o -4 addr show dev eth0");
        assert!(
            addresses.contains("inet 10.88.0.5/16 brd 10.88.255.255"),
            "{addresses}"
        );
        assert!(
            !addresses.contains("192.0.2.9"),
            "the earlier address is gone: {addresses}"
        );
        // Again: the same end state, no error.
        update_interface(&interface).unwrap();

        let gateway = Ipv4Addr::new(10, 88, 0, 1);
        let routes = [
            Route {
                destination: None,
                gateway: Some(gateway),
                device: "eth0".into(),
                source: None,
                mtu: None,
            },
            Route {
                destination: Some("10.99.0.0/16".parse().unwrap()),
                gateway: None,
                device: "eth0".into(),
                source: None,
                mtu: Some(1300),
            },
        ];
        update_routes(&routes).unwrap();
        let table = ip("-4 route show");
        assert!(table.contains("default via 10.88.0.1 dev eth0"), "{table}");
        assert!(table.contains("10.99.0.0/16 dev eth0"), "{table}");
        assert!(table.contains("mtu 1300"), "{table}");

        add_neighbours(&[Neighbour {
            address: gateway,
            mac: MacAddress([2, 0, 0, 0, 0, 1]),
            device: "eth0".into(),
        }])
        .unwrap();
        let neighbours = ip("-4 neigh show dev eth0");
        assert!(
            neighbours.contains("10.88.0.1 lladdr 02:00:00:00:00:01 PERMANENT"),
            "{neighbours}"
        );
    });
}

#[test]
fn bad_requests_name_what_to_fix() {
    in_own_namespace(|| {
        let mut interface = Interface {
            mac: "02:00:00:00:00:77".parse().unwrap(),
            name: "eth0".into(),
            addresses: Vec::new(),
            mtu: 1500,
        };
        let e = update_interface(&interface).unwrap_err();
        assert!(
            e.message
                .contains("no interface with MAC 02:00:00:00:00:77"),
            "{e}"
        );
        interface.mac = "02:00:00:00:00:2a".parse().unwrap();
        interface.name = "a-name-longer-than-15".into();
        let e = update_interface(&interface).unwrap_err();
        assert!(e.message.contains("1 to 15 bytes"), "{e}");
        interface.name = "eth0".into();
        interface.mtu = 20;
        assert!(update_interface(&interface)
            .unwrap_err()
            .message
            .contains("at least 68"));
        let e = update_routes(&[Route {
            destination: None,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            device: "eth9".into(),
            source: None,
            mtu: None,
        }])
        .unwrap_err();
        assert!(e.message.contains("no interface 'eth9'"), "{e}");
        // A gateway off every link is the kernel's error, said with the route.
        let e = update_routes(&[Route {
            destination: None,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            device: "cocoon-a".into(),
            source: None,
            mtu: None,
        }])
        .unwrap_err();
        assert!(
            e.message.contains("default via 10.0.0.1 dev cocoon-a"),
            "{e}"
        );
    });
}
