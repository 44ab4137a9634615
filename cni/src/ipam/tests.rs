use super::*;

fn cidrs() -> Vec<IpNet> {
    vec![
        "10.244.1.0/24".parse().unwrap(),
        "fd00:244:0:1::/64".parse().unwrap(),
    ]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn usable_range_rule() {
    assert_eq!(usable_range("10.0.0.0/24".parse().unwrap()), Some((2, 254)));
    assert_eq!(usable_range("10.0.0.0/30".parse().unwrap()), Some((2, 2)));
    assert_eq!(usable_range("10.0.0.0/31".parse().unwrap()), None);
    assert_eq!(usable_range("fd00::/127".parse().unwrap()), None);
    assert_eq!(
        usable_range("::/0".parse().unwrap()),
        Some((2, u128::MAX - 1))
    );
    let c: IpNet = "10.0.0.0/24".parse().unwrap();
    assert!(!is_usable(c, ip("10.0.0.0")));
    assert!(!is_usable(c, ip("10.0.0.1")));
    assert!(is_usable(c, ip("10.0.0.2")));
    assert!(is_usable(c, ip("10.0.0.254")));
    assert!(!is_usable(c, ip("10.0.0.255")));
    assert!(!is_usable(c, ip("10.0.1.2")));
}

#[test]
fn first_free_skips_taken() {
    let c: IpNet = "10.0.0.0/29".parse().unwrap();
    let mut taken = HashSet::new();
    assert_eq!(first_free(c, &taken), Some(ip("10.0.0.2")));
    taken.insert(ip("10.0.0.2"));
    taken.insert(ip("10.0.0.3"));
    assert_eq!(first_free(c, &taken), Some(ip("10.0.0.4")));
    for a in 4..=6 {
        taken.insert(ip(&format!("10.0.0.{a}")));
    }
    assert_eq!(first_free(c, &taken), None);
}

#[test]
fn owner_file_round_trip() {
    let o = Owner {
        container_id: "abc".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(o.to_file(), "abc\neth0\n");
    assert_eq!(Owner::from_file(&o.to_file()), Some(o));
    assert_eq!(Owner::from_file(""), None);
    assert_eq!(Owner::from_file("abc\n"), None);
    assert_eq!(Owner::from_file("abc\neth0"), None);
    assert_eq!(Owner::from_file("abc\neth0\nx\n"), None);
}

#[test]
fn allocates_both_families_from_two() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(a, vec![ip("10.244.1.2"), ip("fd00:244:0:1::2")]);
    let b = ipam.allocate("c2", "eth0").unwrap();
    assert_eq!(b, vec![ip("10.244.1.3"), ip("fd00:244:0:1::3")]);
    let c = ipam.allocate("c1", "net1").unwrap();
    assert_eq!(c, vec![ip("10.244.1.4"), ip("fd00:244:0:1::4")]);
    assert_eq!(
        fs::read_to_string(dir.path().join("fd00:244:0:1::3")).unwrap(),
        "c2\neth0\n"
    );
    assert_eq!(ipam.lookup("c1", "eth0").unwrap(), a);
    assert_eq!(ipam.list().unwrap().len(), 6);
    // No temporary file left behind.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(TMP_PREFIX)),
        "{names:?}"
    );
}

#[test]
fn lookup_without_cidrs_finds_every_address_of_the_owner() {
    // DEL and GC open the store without CIDRs: they must still find what to undo (the
    // addresses in the BPF local-pod map), and so must a store whose CIDRs changed.
    let dir = tempfile::tempdir().unwrap();
    let a = Ipam::open(dir.path(), &cidrs())
        .unwrap()
        .allocate("c1", "eth0")
        .unwrap();
    Ipam::open(dir.path(), &cidrs())
        .unwrap()
        .allocate("c2", "eth0")
        .unwrap();
    let bare = Ipam::open(dir.path(), &[]).unwrap();
    assert_eq!(bare.lookup("c1", "eth0").unwrap(), a);
    assert!(bare.lookup("c1", "net1").unwrap().is_empty());
    let v6_only = Ipam::open(dir.path(), &cidrs()[1..]).unwrap();
    assert_eq!(v6_only.lookup("c1", "eth0").unwrap(), vec![a[1], a[0]]);
}

#[test]
fn allocation_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    let again = ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(a, again);
    // A second handle (another process) sees the same.
    let other = Ipam::open(dir.path(), &cidrs()).unwrap();
    assert_eq!(other.allocate("c1", "eth0").unwrap(), a);
    assert_eq!(ipam.list().unwrap().len(), 2);
}

#[test]
fn half_done_allocation_is_completed_by_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    // A plugin killed after its IPv4 address.
    fs::write(dir.path().join("10.244.1.2"), "c1\neth0\n").unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(a, vec![ip("10.244.1.2"), ip("fd00:244:0:1::2")]);
}

#[test]
fn release_frees_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    ipam.allocate("c1", "net1").unwrap();
    ipam.allocate("c2", "eth0").unwrap();
    assert_eq!(ipam.release("c1", Some("eth0")).unwrap(), a);
    assert!(ipam.release("c1", Some("eth0")).unwrap().is_empty());
    assert!(ipam.lookup("c1", "eth0").unwrap().is_empty());
    assert_eq!(ipam.lookup("c1", "net1").unwrap().len(), 2);
    // The freed address is the lowest free one again.
    assert_eq!(ipam.allocate("c3", "eth0").unwrap(), a);
    // Release of every interface.
    assert_eq!(ipam.release("c1", None).unwrap().len(), 2);
    assert!(ipam.release("unknown", None).unwrap().is_empty());
    assert_eq!(ipam.list().unwrap().len(), 4);
}

#[test]
fn exhaustion_on_a_slash_30() {
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<IpNet> = vec!["10.9.0.0/30".parse().unwrap()];
    let ipam = Ipam::open(dir.path(), &small).unwrap();
    assert_eq!(ipam.allocate("c1", "eth0").unwrap(), vec![ip("10.9.0.2")]);
    match ipam.allocate("c2", "eth0") {
        Err(IpamError::Exhausted { cidr }) => assert_eq!(cidr, small[0]),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    let msg = ipam.allocate("c2", "eth0").unwrap_err().to_string();
    assert!(msg.contains("10.9.0.0/30"), "{msg}");
    // Exhaustion in the second CIDR rolls back the first.
    let dir2 = tempfile::tempdir().unwrap();
    let mixed: Vec<IpNet> = vec![
        "10.9.0.0/24".parse().unwrap(),
        "fd00:9::/126".parse().unwrap(),
    ];
    let ipam = Ipam::open(dir2.path(), &mixed).unwrap();
    ipam.allocate("c1", "eth0").unwrap();
    assert!(matches!(
        ipam.allocate("c2", "eth0"),
        Err(IpamError::Exhausted { .. })
    ));
    assert_eq!(ipam.list().unwrap().len(), 2);
}

#[test]
fn node_subnet_blocks_give_one_address_per_family_filling_block_after_block() {
    let dir = tempfile::tempdir().unwrap();
    // Two /30 blocks (one usable address each) and one /126 of the node subnet.
    let blocks: Vec<IpNet> = ["192.168.10.16/30", "192.168.10.52/30", "fd00:10::10/126"]
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
    let ipam = Ipam::open(dir.path(), &blocks).unwrap().with_blocks();
    let a = ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(a, vec![ip("192.168.10.18"), ip("fd00:10::12")]);
    // The IPv6 block is full: the pod gets no address there, and nothing is kept.
    assert!(matches!(
        ipam.allocate("c2", "eth0"),
        Err(IpamError::Exhausted { .. })
    ));
    assert_eq!(ipam.list().unwrap().len(), 2);
    // IPv4 only: the first block is full, the second serves; idempotent.
    let v4 = Ipam::open(dir.path(), &blocks[..2]).unwrap().with_blocks();
    let b = v4.allocate("c2", "eth0").unwrap();
    assert_eq!(b, vec![ip("192.168.10.54")]);
    assert_eq!(v4.allocate("c2", "eth0").unwrap(), b);
    let err = v4.allocate("c3", "eth0").unwrap_err().to_string();
    assert!(err.contains("192.168.10.52/30"), "{err}");
    // Without blocks, every CIDR gives an address (the per-node-CIDR rule is unchanged).
    let plain = Ipam::open(dir.path(), &blocks[..2]).unwrap();
    v4.release("c2", None).unwrap();
    v4.release("c1", None).unwrap();
    assert_eq!(
        plain.allocate("c4", "eth0").unwrap(),
        vec![ip("192.168.10.18"), ip("192.168.10.54")]
    );
}

#[test]
fn invalid_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    for (c, i) in [("", "eth0"), ("a\nb", "eth0"), ("a/b", "eth0"), ("c", "")] {
        assert!(matches!(
            ipam.allocate(c, i),
            Err(IpamError::InvalidKey { .. })
        ));
    }
    let none = Ipam::open(dir.path(), &[]).unwrap();
    assert!(matches!(
        none.allocate("c", "eth0"),
        Err(IpamError::NoCidrs)
    ));
}

#[test]
fn unparseable_files_block_their_address_and_gc_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("10.244.1.2"), "").unwrap();
    fs::write(dir.path().join(".tmp-1-1"), "c9\neth0\n").unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    assert_eq!(
        ipam.allocate("c1", "eth0").unwrap()[0],
        ip("10.244.1.3"),
        "an empty file still holds its address"
    );
    let freed = ipam.gc(&[("c1".into(), "eth0".into())]).unwrap();
    assert_eq!(freed, vec![ip("10.244.1.2")]);
    assert!(!dir.path().join(".tmp-1-1").exists());
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let keep = ipam.allocate("c1", "eth0").unwrap();
    ipam.allocate("c1", "net1").unwrap();
    ipam.allocate("c2", "eth0").unwrap();
    let freed = ipam.gc(&[("c1".into(), "eth0".into())]).unwrap();
    assert_eq!(freed.len(), 4);
    let left: Vec<IpAddr> = ipam
        .list()
        .unwrap()
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(left, keep);
    assert!(ipam.gc(&[]).unwrap().len() == 2);
    assert!(ipam.list().unwrap().is_empty());
}

#[test]
fn concurrent_allocations_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                // Every thread has its own handle: its own lock file descriptor, like a process.
                let ipam = Ipam::open(&path, &cidrs()).unwrap();
                (0..25)
                    .flat_map(|k| ipam.allocate(&format!("c{t}-{k}"), "eth0").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 400);
    let distinct: HashSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 400, "duplicate addresses handed out");
    let v4 = all.iter().filter(|a| a.is_ipv4()).count();
    assert_eq!(v4, 200);
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    assert_eq!(ipam.list().unwrap().len(), 400);
}

#[test]
fn racing_linkers_without_the_lock_still_never_share() {
    // The lock is not what prevents duplicates: `link` is. Claim directly, bypassing the lock.
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = dir.path().to_path_buf();
            std::thread::spawn(move || {
                let ipam = Ipam::open(&path, &cidrs()).unwrap();
                let owner = Owner {
                    container_id: format!("c{t}"),
                    ifname: "eth0".into(),
                };
                let mut taken = Taken::default();
                (0..10)
                    .map(|_| ipam.claim(cidrs()[0], &owner, &mut taken).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<IpAddr> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let distinct: HashSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 80);
}

/// The names in the store that are owner index links.
fn indexes(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(INDEX_PREFIX))
        .collect();
    out.sort();
    out
}

#[test]
fn an_owner_is_found_through_its_index_link_and_released_with_it() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    let owner = Owner {
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    assert_eq!(indexes(dir.path()), vec![owner.index_name()]);
    // The index is the addresses' own file: one inode, three names.
    let index = fs::metadata(dir.path().join(owner.index_name())).unwrap();
    assert_eq!(index.nlink(), 3);
    for addr in &a {
        let file = fs::metadata(dir.path().join(addr.to_string())).unwrap();
        assert_eq!(file.ino(), index.ino());
    }
    assert_eq!(ipam.lookup("c1", "eth0").unwrap(), a);
    assert_eq!(ipam.release("c1", Some("eth0")).unwrap(), a);
    assert!(indexes(dir.path()).is_empty());
    assert!(ipam.lookup("c1", "eth0").unwrap().is_empty());
}

#[test]
fn a_store_without_index_links_is_indexed_once_and_keeps_its_allocations() {
    let dir = tempfile::tempdir().unwrap();
    // As an older meshd-cni left it: one owner file linked under both addresses, no index.
    fs::write(dir.path().join(".lock"), "").unwrap();
    fs::write(dir.path().join("10.244.1.2"), "c1\neth0\n").unwrap();
    fs::hard_link(
        dir.path().join("10.244.1.2"),
        dir.path().join("fd00:244:0:1::2"),
    )
    .unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let held = vec![ip("10.244.1.2"), ip("fd00:244:0:1::2")];
    // Found by scanning until the store is indexed.
    assert_eq!(ipam.lookup("c1", "eth0").unwrap(), held);
    // An allocation indexes the store first: the retry of c1 gets its addresses again.
    ipam.allocate("c2", "eth0").unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join(".lock")).unwrap(),
        INDEXED_MARK
    );
    assert_eq!(indexes(dir.path()).len(), 2);
    assert_eq!(ipam.allocate("c1", "eth0").unwrap(), held);
    assert_eq!(ipam.lookup("c1", "eth0").unwrap(), held);
}

#[test]
fn an_index_left_without_addresses_is_reused_by_the_owner_and_collected_by_gc() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let a = ipam.allocate("c1", "eth0").unwrap();
    // A DEL killed between its address removals and its index removal.
    for addr in &a {
        fs::remove_file(dir.path().join(addr.to_string())).unwrap();
    }
    assert_eq!(indexes(dir.path()).len(), 1);
    assert_eq!(ipam.allocate("c1", "eth0").unwrap(), a);
    assert_eq!(indexes(dir.path()).len(), 1);
    for addr in &a {
        fs::remove_file(dir.path().join(addr.to_string())).unwrap();
    }
    assert!(ipam.gc(&[]).unwrap().is_empty());
    assert!(indexes(dir.path()).is_empty());
}

#[test]
fn an_indexed_store_is_not_scanned_again() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join(".lock")).unwrap(),
        INDEXED_MARK
    );
    // A file without an index, as a scan would index it: an indexed store never scans again.
    fs::write(dir.path().join("10.244.1.200"), "c9\neth0\n").unwrap();
    ipam.allocate("c2", "eth0").unwrap();
    assert_eq!(indexes(dir.path()).len(), 2, "no third index: no scan");
    assert!(ipam.lookup("c9", "eth0").unwrap().is_empty());
}

#[test]
fn the_store_is_created_0700_with_0600_files_and_an_open_one_is_tightened() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = root.path().join("state/ipam");
    let ipam = Ipam::open(&dir, &cidrs()).unwrap();
    ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(mode(&dir), 0o700);
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    // A store an older version left 0755: tightened, its allocations kept.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let before = ipam.list().unwrap();
    let again = Ipam::open(&dir, &cidrs()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(again.list().unwrap(), before);
    // A file where the directory should be: refused, naming it.
    let file = root.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = Ipam::open(&file, &cidrs()).unwrap_err().to_string();
    assert!(
        err.contains("not a directory") && err.contains("not-a-dir"),
        "{err}"
    );
}

#[test]
fn gc_spares_what_an_add_committed_after_the_gc_began() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let old = ipam.allocate("old", "eth0").unwrap();
    // An allocation stamped long ago, as a dead ADD leaves it.
    let stamp = |id: &str, t: SystemTime| {
        let index = dir.path().join(
            Owner {
                container_id: id.into(),
                ifname: "eth0".into(),
            }
            .index_name(),
        );
        File::options()
            .write(true)
            .open(index)
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    stamp(
        "old",
        SystemTime::now() - std::time::Duration::from_secs(60),
    );
    let started = SystemTime::now();
    let attach = ipam.begin_attach().unwrap();
    let fresh = ipam.allocate("fresh", "eth0").unwrap();
    ipam.commit(&attach, "fresh", "eth0").unwrap();
    drop(attach);
    let _gc = ipam.begin_gc().unwrap();
    let candidates: Vec<IpAddr> = ipam
        .gc_candidates(&[], Some(started))
        .unwrap()
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(candidates, old);
    assert_eq!(ipam.gc_since(&[], Some(started)).unwrap(), old);
    assert_eq!(ipam.lookup("fresh", "eth0").unwrap(), fresh);
    // A later GC, begun after the commit, judges it.
    assert_eq!(ipam.gc_since(&[], Some(SystemTime::now())).unwrap(), fresh);
}

#[test]
fn gc_waits_for_an_add_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let attach = ipam.begin_attach().unwrap();
    let addrs = ipam.allocate("c1", "eth0").unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let started = SystemTime::now();
            let _gc = ipam.begin_gc().unwrap();
            assert!(
                done.load(std::sync::atomic::Ordering::SeqCst),
                "GC ran while an ADD was in flight"
            );
            ipam.gc_since(&[], Some(started)).unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        ipam.commit(&attach, "c1", "eth0").unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(attach);
        assert!(gc.join().unwrap().is_empty());
    });
    assert_eq!(ipam.lookup("c1", "eth0").unwrap(), addrs);
}

#[test]
fn a_listing_follows_addresses_that_change_hands_and_files_without_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let ipam = Ipam::open(dir.path(), &cidrs()).unwrap();
    let owner_of = |ipam: &Ipam, addr: IpAddr| {
        ipam.list()
            .unwrap()
            .into_iter()
            .find(|e| e.address == addr)
            .and_then(|e| e.owner)
            .map(|o| o.container_id)
    };
    let a = ipam.allocate("c1", "eth0").unwrap();
    assert_eq!(owner_of(&ipam, a[0]).as_deref(), Some("c1"));
    // Read again (the owner is known by now): still c1.
    assert_eq!(owner_of(&ipam, a[1]).as_deref(), Some("c1"));
    // The addresses go to another pod: the listing names the new owner.
    ipam.release("c1", Some("eth0")).unwrap();
    assert_eq!(ipam.allocate("c2", "eth0").unwrap(), a);
    assert_eq!(owner_of(&ipam, a[0]).as_deref(), Some("c2"));
    // A file without index (written by hand) is read on every listing.
    let stray = ip("10.244.1.200");
    fs::write(dir.path().join(stray.to_string()), "c9\neth0\n").unwrap();
    assert_eq!(owner_of(&ipam, stray).as_deref(), Some("c9"));
    fs::write(dir.path().join(stray.to_string()), "not an owner").unwrap();
    assert_eq!(owner_of(&ipam, stray), None);
    assert!(ipam.list().unwrap().iter().any(|e| e.address == stray));
}
