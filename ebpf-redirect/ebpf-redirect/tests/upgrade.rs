//! Root test of an upgrade that lengthens `VERDICTS`: a pin directory holding the five-entry
//! per-CPU array of an older object is loaded over; the counts carry over into the new,
//! longer array and the new verdicts read as 0.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::ffi::CString;
use std::path::PathBuf;

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use ebpf_redirect::{remove_pins, Datapath, VERDICT_COUNT};

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = remove_pins(&self.0);
    }
}

/// Creates a `BPF_MAP_TYPE_PERCPU_ARRAY` of `u64` with `len` entries, pinned at `path`, as an
/// older loader left it.
fn pin_old_verdicts(path: &std::path::Path, len: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_PERCPU_ARRAY;
    attr[1] = 4; // key size
    attr[2] = 8; // value size
    attr[3] = len;
    // SAFETY: `attr` is a valid bpf_attr buffer of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), 128u32) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.to_str().unwrap()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; `name` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_mut_ptr(), 128u32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is ours; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn a_shorter_pinned_verdicts_array_is_replaced_and_its_counts_carried_over() {
    testkit::require_root();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/ebpf-redirect-test-{}-upgrade",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).unwrap();
    let path = pins.0.join("VERDICTS");
    pin_old_verdicts(&path, 5);
    let cpus = aya::util::nr_cpus().unwrap();
    {
        let map = Map::PerCpuArray(MapData::from_pin(&path).unwrap());
        let mut old: PerCpuArray<MapData, u64> = map.try_into().unwrap();
        for i in 0..5u32 {
            // Spread over the CPUs: the sum is what carries over.
            let values: Vec<u64> = (0..cpus)
                .map(|c| u64::from(i + 1) * 10 + c as u64)
                .collect();
            old.set(i, PerCpuValues::try_from(values).unwrap(), 0)
                .unwrap();
        }
    }
    let want: Vec<u64> = (0..5u64)
        .map(|i| (0..cpus as u64).map(|c| (i + 1) * 10 + c).sum())
        .collect();

    let dp = Datapath::load(&pins.0).expect("load over the older pins");
    let counters = dp.counters().unwrap();
    assert_eq!(counters.len(), VERDICT_COUNT as usize);
    assert_eq!(&counters[..5], &want[..], "{counters:?}");
    assert!(counters[5..].iter().all(|c| *c == 0), "{counters:?}");
    let len = MapData::from_pin(&path)
        .unwrap()
        .info()
        .unwrap()
        .max_entries();
    assert_eq!(len, VERDICT_COUNT);
    // Loading again (same length) keeps the counts as they are.
    drop(dp);
    let dp = Datapath::load(&pins.0).unwrap();
    assert_eq!(&dp.counters().unwrap()[..5], &want[..]);
}
