//! The harness's namespace lab itself: hosts reach each other over the bridge, the root
//! namespace is untouched, and everything is gone after drop; a lab with engines gives each
//! machine its own hostname and Docker Engine, loads images, and leaves nothing behind, also
//! after a run that was killed.

use shoal_tests::engines::engines_unavailable;
use shoal_tests::services::{docker_unavailable, image_tag, Docker, DockerCleanup};
use shoal_tests::{require_netns, run_ok, Lab};
use sha2::Digest as _;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root_links() -> String {
    let out = run_ok(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_else(|e| panic!("{e}"));
    // Counters and states of real interfaces may change; names may not.
    out.lines().filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string())).collect::<Vec<_>>().join(",")
}

#[test]
fn lab_hosts_share_a_segment_and_vanish_on_drop() {
    if !require_netns("lab") {
        return;
    }
    let before = root_links();
    let lab = Lab::new(2).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = lab.hosts.iter().map(|h| h.ns.clone()).chain([lab.switch.clone()]).collect();
    assert_eq!(root_links(), before, "the lab changed the root namespace's interfaces");

    // One datagram from host 1 to host 2 resolves host 2's MAC over the bridge.
    let target = lab.hosts[1].ip.to_string();
    let send = format!("echo hi > /dev/udp/{target}/9");
    let out = lab.exec(0, &["bash", "-c", &send]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "send failed: {}", out.stderr);
    let mut resolved = false;
    for _ in 0..50 {
        let neigh = lab.exec(0, &["ip", "neigh", "show", &target]).unwrap_or_else(|e| panic!("{e}"));
        if neigh.stdout.contains("lladdr") {
            resolved = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(resolved, "host 1 could not resolve host 2 over the bridge");
    let lo = lab.exec(0, &["ip", "-o", "link", "show", "lo"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(lo.stdout.contains("UP"), "lo is not up: {}", lo.stdout);

    drop(lab);
    let list = run_ok(Command::new("ip").args(["netns", "list"])).unwrap_or_else(|e| panic!("{e}"));
    for n in names {
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())), "{n} still exists after drop");
    }
}

/// Mounts, processes and namespaces that name `mark` (a lab's folder or name).
fn leftovers(folder: &str, ns_prefix: &str) -> Vec<String> {
    let mut left = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    left.extend(mounts.lines().filter(|l| l.contains(folder)).map(|l| format!("mount: {l}")));
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " ")).unwrap_or_default();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        if cmd.contains(folder) && !zombie {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    let list = run_ok(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    left.extend(list.lines().filter(|l| l.starts_with(&format!("{ns_prefix}-"))).map(|l| format!("netns: {l}")));
    if std::path::Path::new(folder).exists() {
        left.push(format!("folder {folder}"));
    }
    left
}

fn engine_lab_or_skip(test: &str) -> bool {
    if !require_netns(test) {
        return false;
    }
    if let Some(why) = engines_unavailable() {
        println!("skipped: {test}: {why}");
        return false;
    }
    if let Some(why) = docker_unavailable() {
        println!("skipped: {test}: {why}");
        return false;
    }
    true
}

/// Each machine of a lab with engines has its own hostname, engine (own data root, bridge
/// subnet, containers) and the images loaded from the host; dropping the lab with a
/// container running leaves no process, mount, namespace or folder of it.
#[test]
fn lab_machines_have_their_own_engines_and_vanish_on_drop() {
    if !engine_lab_or_skip("lab engines") {
        return;
    }
    let before = root_links();
    let host = Docker::connect().unwrap_or_else(|e| panic!("{e}"));
    let image = image_tag("lab");
    let cleanup = DockerCleanup::new(&image);
    host.build_busybox(&image).unwrap_or_else(|e| panic!("{e}"));

    let t = Instant::now();
    let lab = Lab::with_engines(3).unwrap_or_else(|e| panic!("{e}"));
    println!("3-engine lab up in {:.2} s (measured by the test: {:.2} s)", lab.started_in().as_secs_f64(), t.elapsed().as_secs_f64());
    let took = lab.load_images(&[&image]).unwrap_or_else(|e| panic!("{e}"));
    println!("{image} loaded into 3 engines in {:.2} s", took.as_secs_f64());
    assert_eq!(root_links(), before, "the lab changed the root namespace's interfaces");
    let slot = lab.engine_slot().unwrap_or_else(|| panic!("a lab with engines has a slot"));
    let folder = format!("/tmp/shoalt-engines/e{slot}/");
    let ns_prefix = format!("shoalt-e{slot}");

    let mut bips = BTreeSet::new();
    for i in 0..3 {
        let e = lab.engine(i).unwrap_or_else(|| panic!("machine {i} has no engine"));
        let name = lab.exec(i, &["cat", "/proc/sys/kernel/hostname"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name.stdout.trim(), format!("n{}", i + 1), "hostname of machine {}", i + 1);
        assert_eq!(e.hostname, format!("n{}", i + 1));
        let info = run_ok(e.docker_cli().args(["info", "-f", "{{.Name}} {{.DockerRootDir}}"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.trim(), format!("n{} {}m{}/root", i + 1, folder, i + 1), "the engine of machine {} (its name is the machine's hostname)", i + 1);
        assert!(bips.insert(e.bip.clone()), "two machines have bridge subnet {}", e.bip);
        let images = run_ok(e.docker_cli().args(["images", "-q", &image])).unwrap_or_else(|e| panic!("{e}"));
        assert!(!images.trim().is_empty(), "{image} was not loaded into the engine of n{}", i + 1);
        // The engine's default bridge is in the machine's namespace, not on the host.
        let addr = lab.exec(i, &["ip", "-o", "-4", "addr", "show", "docker0"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(addr.stdout.contains(&e.bip), "docker0 of n{} does not have {}: {}", i + 1, e.bip, addr.stdout);
    }
    assert_eq!(root_links(), before, "an engine of the lab changed the root namespace's interfaces");
    // A running container, so that the drop has one to remove.
    let e1 = lab.engine(0).unwrap_or_else(|| panic!("no engine"));
    let id = run_ok(e1.docker_cli().args(["run", "-d", &image, "/bin/sleep", "600"])).unwrap_or_else(|e| panic!("{e}"));
    let ps = run_ok(e1.docker_cli().args(["ps", "-q"])).unwrap_or_else(|e| panic!("{e}"));
    assert!(!ps.trim().is_empty() && id.starts_with(ps.trim()), "the container does not run on n1's engine: {ps:?}");
    let e2 = lab.engine(1).unwrap_or_else(|| panic!("no engine"));
    let ps2 = run_ok(e2.docker_cli().args(["ps", "-aq"])).unwrap_or_else(|e| panic!("{e}"));
    assert!(ps2.trim().is_empty(), "n2's engine shows n1's container: {ps2:?}");
    assert!(leftovers(&folder, &ns_prefix).len() > 3, "the lab's processes, mounts and namespaces should be visible while it runs");

    let t = Instant::now();
    drop(lab);
    println!("lab torn down in {:.2} s", t.elapsed().as_secs_f64());
    let left = leftovers(&folder, &ns_prefix);
    assert!(left.is_empty(), "left after drop:\n{}", left.join("\n"));
    drop(cleanup);
}

/// A lab whose test process was killed (SIGKILL, no drop) is torn down by the next lab that
/// takes its slot: its containers, engines, mounts, namespaces and folder are gone.
#[test]
fn a_stale_lab_of_a_killed_run_is_cleaned_at_start() {
    if std::env::var_os("SHOAL_LAB_HELPER").is_some() || !engine_lab_or_skip("stale lab") {
        return;
    }
    // A copy of this test binary builds a lab, starts a container, says where, and waits to be killed.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(exe)
        .args(["--exact", "helper_builds_a_lab_and_waits", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("SHOAL_LAB_HELPER", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["helper", "lab", "slot", slot, "sleeps", secs, "id", id] = words.as_slice() {
                let _ = tx.send((slot.to_string(), secs.to_string(), id.to_string()));
            }
        }
    });
    let (slot, secs, container) = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the helper did not build its lab")
    });
    let folder = format!("/tmp/shoalt-engines/e{slot}/");
    let ns_prefix = format!("shoalt-e{slot}");
    // The container's process names nothing of the lab: find it by its command.
    let sleeper = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .any(|pid| {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
                !zombie && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == format!("/bin/sleep {secs}"))
            })
    };
    // `docker run -d` may return before runc has exec'd the command.
    let until = Instant::now() + Duration::from_secs(10);
    while !sleeper() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sleeper(), "the helper's container (/bin/sleep {secs}) should run");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!leftovers(&folder, &ns_prefix).is_empty(), "the killed helper's lab should still be there");

    // Our lab takes the lowest free slot; when another test's lab took the helper's first,
    // that one cleaned it. Either way it must be gone once ours is up.
    let lab = Lab::with_engines(1).unwrap_or_else(|e| panic!("{e}"));
    let ours = lab.engine_slot().unwrap_or_default().to_string();
    let left: Vec<String> = if ours == slot {
        // Our own lab now lives under the same name: only the old container must be gone.
        Vec::new()
    } else {
        leftovers(&folder, &ns_prefix)
    };
    assert!(left.is_empty(), "the stale lab is still there:\n{}", left.join("\n"));
    assert!(!sleeper(), "the stale lab's container still runs");
    let cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path().join("docker").join(&container))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(cgroups.is_empty(), "the stale container's cgroups are left: {cgroups:?}");
    let address = format!("{folder}m1/exec/containerd/containerd.sock/moby/{container}");
    let digest = sha2::Sha256::digest(address.as_bytes());
    let socket = format!("/run/containerd/s/{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert!(!std::path::Path::new(&socket).exists(), "the killed shim's socket {socket} is left");
    let e = lab.engine(0).unwrap_or_else(|| panic!("no engine"));
    let ps = run_ok(e.docker_cli().args(["ps", "-aq"])).unwrap_or_else(|e| panic!("{e}"));
    assert!(ps.trim().is_empty(), "a fresh lab's engine has containers: {ps:?}");
    drop(lab);
    if ours == slot {
        let left = leftovers(&folder, &ns_prefix);
        assert!(left.is_empty(), "left after drop:\n{}", left.join("\n"));
    }
}

/// Run by `a_stale_lab_of_a_killed_run_is_cleaned_at_start` in a child process only.
#[test]
#[ignore = "a helper process of a_stale_lab_of_a_killed_run_is_cleaned_at_start"]
fn helper_builds_a_lab_and_waits() {
    if std::env::var_os("SHOAL_LAB_HELPER").is_none() {
        return;
    }
    let lab = Lab::with_engines(1).unwrap_or_else(|e| panic!("{e}"));
    let e = lab.engine(0).unwrap_or_else(|| panic!("no engine"));
    let docker = Docker::connect_to(&e.socket).unwrap_or_else(|e| panic!("{e}"));
    docker.build_busybox("shoal-test-busybox:stale").unwrap_or_else(|e| panic!("{e}"));
    let slot = lab.engine_slot().unwrap_or_default();
    // A duration no other process is likely to sleep, to find the container's process by.
    let secs = (600_000 + std::process::id() % 100_000).to_string();
    let id = run_ok(e.docker_cli().args(["run", "-d", "shoal-test-busybox:stale", "/bin/sleep", &secs])).unwrap_or_else(|e| panic!("{e}"));
    println!("helper lab slot {slot} sleeps {secs} id {}", id.trim());
    std::thread::sleep(Duration::from_secs(120));
}
