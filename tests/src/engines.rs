//! A Docker Engine per lab machine: [`Lab::with_engines`] gives every host of a [`Lab`] its
//! own `dockerd` (own data root, exec root, socket, bridge subnet and hostname), as separate
//! machines have, and [`Lab::load_images`] copies images into them from the host's engine.
//!
//! How an engine is started (facts found on this machine, see `../shared/lab/engines.sh`):
//! - `nsenter --net=/run/netns/NS`, not `ip netns exec` (that remounts /sys and dockerd then
//!   finds no cgroups); `--uts=FILE` puts it in the machine's own UTS namespace, kept alive
//!   by a bind mount on FILE, whose hostname is the machine's name (agents started on the
//!   machine join the same one);
//! - `--config-file` with `{}`: the host's /etc/docker/daemon.json sets `data-root`;
//! - the host's storage driver; a bridge subnet (`--bip`) and an address pool for user
//!   networks that are distinct per machine and per lab, so no two engines of any lab
//!   running at the same time hand out one address.
//!
//! Labs with engines are numbered by a *slot* K (0..[`MAX_ENGINE_LABS`]), held with an
//! exclusive `flock` on `/tmp/shoalt-engines/eK.lock` for the life of the lab, so that labs
//! in other test processes (or threads) never share a slot; the kernel drops the lock when the
//! process dies. The lab's name is `shoalt-eK`: namespaces `shoalt-eK-h1…` and
//! `shoalt-eK-sw`, folder `/tmp/shoalt-engines/eK/`. A folder or namespace of a free slot is a
//! stale lab left by a crashed run and is torn down before the slot is reused.
//!
//! Teardown (on drop, also on panic, and of a stale lab): every container of every engine
//! (`docker rm -f`), the engines (SIGTERM, then SIGKILL of whatever still names the lab's
//! folder: dockerd, containerd, shims and what runs under them, fuse-overlayfs), every process
//! left in the namespaces, the namespaces, every mount under the folder (lazily), the folder.
//! The engines are started under `setpriv --pdeathsig TERM`: if the thread that built the lab
//! ends without dropping it (the test process was killed), they shut down by themselves.
//! So build a lab with engines in the thread that uses it.

use crate::{ip, run, which, Lab, LabHost, Output};
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Labs with engines that may run at the same time on one host (slots).
pub const MAX_ENGINE_LABS: usize = 16;
/// Machines of one lab with engines (their subnets are numbered within the lab's slot).
pub const MAX_ENGINES_PER_LAB: usize = 15;
/// Bound on every engine of a lab answering `/_ping` after its start.
pub const ENGINE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on `docker save` of the images and on each `docker load`.
pub const IMAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an engine gets to stop after SIGTERM before it is killed.
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of an engine's log shown when it does not start.
const ENGINE_LOG_TAIL: usize = 25;

/// Where every lab with engines keeps its slot locks and folders (short: unix socket paths
/// are limited to 107 bytes, and containerd's lives three levels below an engine's folder).
const ENGINES_DIR: &str = "/tmp/shoalt-engines";

/// The Docker Engine of one machine of a lab built with [`Lab::with_engines`].
#[derive(Debug, Clone)]
pub struct HostEngine {
    /// The machine's hostname (in its own UTS namespace): `n1`, `n2`, …
    pub hostname: String,
    /// The engine's API socket; give it to `--docker-socket` or [`crate::services::Docker::connect_to`].
    pub socket: PathBuf,
    /// The machine's UTS namespace (a bind mount of it): `nsenter --uts=` this.
    pub uts: PathBuf,
    /// The engine's folder: `daemon.json`, `dockerd.log`, `root/` (data), `exec/`.
    pub dir: PathBuf,
    /// Its default bridge, `172.30.X.1/24`.
    pub bip: String,
}

impl HostEngine {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last `lines` lines of the engine's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `docker -H unix://SOCKET`, a `docker` command for this engine.
    pub fn docker_cli(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(format!("unix://{}", self.socket.display()));
        cmd
    }
}

/// What a lab with engines owns besides its namespaces.
pub(crate) struct Engines {
    /// The slot lock, held as long as the lab lives.
    _lock: fs::File,
    pub(crate) slot: usize,
    pub(crate) root: PathBuf,
    /// The `dockerd` processes (host order); `None` once stopped.
    dockerd: Vec<Option<Child>>,
    pub(crate) started_in: Duration,
}

/// `None` when labs with engines can be built here; otherwise why not. Also needs what
/// [`crate::netns_unavailable`] checks.
pub fn engines_unavailable() -> Option<String> {
    for program in ["dockerd", "docker", "nsenter", "unshare", "umount"] {
        if which(program).is_none() {
            return Some(format!("`{program}` is not installed (a lab with engines needs dockerd, the docker CLI and util-linux)"));
        }
    }
    crate::netns_unavailable()
}

/// The host engine's storage driver (`docker info`), so the lab's engines use one that works
/// on this kernel and filesystem (here `fuse-overlayfs`); `None` lets dockerd choose.
fn host_storage_driver() -> Option<String> {
    static DRIVER: OnceLock<Option<String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let out = run(Command::new("docker").args(["info", "-f", "{{.Driver}}"]), Duration::from_secs(20)).ok()?;
            let driver = out.stdout.trim().to_string();
            (out.status.success() && !driver.is_empty() && driver.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .then_some(driver)
        })
        .clone()
}

/// Does the engine at `socket` answer `GET /_ping` with 200?
fn pings(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..got]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

/// Claims the lowest free slot; tears down the stale lab of every free slot met on the way.
fn claim_slot() -> Result<(usize, fs::File), String> {
    fs::create_dir_all(ENGINES_DIR).map_err(|e| format!("cannot create {ENGINES_DIR}: {e}"))?;
    for slot in 0..MAX_ENGINE_LABS {
        let path = Path::new(ENGINES_DIR).join(format!("e{slot}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                clean_stale(slot);
                return Ok((slot, file));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
    Err(format!("all {MAX_ENGINE_LABS} lab slots are in use (locks in {ENGINES_DIR})"))
}

fn slot_root(slot: usize) -> PathBuf {
    Path::new(ENGINES_DIR).join(format!("e{slot}"))
}

fn slot_prefix(slot: usize) -> String {
    format!("{}-e{slot}", crate::NS_PREFIX)
}

/// Namespaces whose name starts with `prefix-`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let Ok(list) = ip(&["netns", "list"]) else { return Vec::new() };
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('-')))
        .map(String::from)
        .collect()
}

/// A free slot (we hold its lock) whose folder or namespaces exist: a crashed run's lab.
fn clean_stale(slot: usize) {
    let root = slot_root(slot);
    let namespaces = namespaces_of(&slot_prefix(slot));
    if !root.exists() && namespaces.is_empty() {
        return;
    }
    let t = Instant::now();
    teardown(&root, &namespaces, &mut Vec::new(), false);
    eprintln!("note: tore down {} left by an earlier run in {:.2} s", slot_prefix(slot), t.elapsed().as_secs_f64());
}

// ------------------------------------------------------------------------------ processes

/// Every process's pid and command line (NULs as spaces).
fn processes() -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((pid, text))
        })
        .collect()
}

/// The parent of `pid`, from `/proc/PID/stat` (the field after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Pids whose command line names something under `root`, plus the children of the
/// containerd shims among them (the containers' first processes, which name nothing there;
/// killing a container's first process ends its whole pid namespace).
fn lab_processes(root: &Path) -> BTreeSet<u32> {
    let mark = format!("{}/", root.display());
    let all = processes();
    let mine: BTreeSet<u32> = all.iter().filter(|(pid, cmd)| *pid != std::process::id() && cmd.contains(&mark)).map(|(p, _)| *p).collect();
    let shims: BTreeSet<u32> = all.iter().filter(|(p, cmd)| mine.contains(p) && cmd.contains("containerd-shim")).map(|(p, _)| *p).collect();
    let children = all.iter().map(|(p, _)| *p).filter(|p| parent_of(*p).is_some_and(|pp| shims.contains(&pp)));
    mine.iter().copied().chain(children).collect()
}

fn kill(signal: &str, pids: impl IntoIterator<Item = u32>) {
    let pids: Vec<String> = pids.into_iter().map(|p| p.to_string()).collect();
    if !pids.is_empty() {
        let _ = run(Command::new("kill").args(["-s", signal]).args(&pids), crate::CLI_TIMEOUT);
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; its parent (maybe us) reaps it.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()) != Some("Z"))
}

/// Mount points under `root` (from this process's mount table), deepest first.
fn mounts_under(root: &Path) -> Vec<String> {
    let mark = format!("{}/", root.display());
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| p.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        .filter(|p| p.starts_with(&mark))
        .collect();
    points.sort();
    points.dedup();
    points.reverse();
    points
}

/// A containerd shim among the lab's processes: its container's id and the socket it made.
struct Shim {
    container: String,
    socket: PathBuf,
}

/// The shims among `pids` (`containerd-shim-runc-v2 -namespace NS -id ID -address ADDR`).
fn shims(pids: &BTreeSet<u32>) -> Vec<Shim> {
    use sha2::Digest as _;
    processes()
        .into_iter()
        .filter(|(p, cmd)| pids.contains(p) && cmd.contains("containerd-shim"))
        .filter_map(|(_, cmd)| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let flag = |name: &str| words.windows(2).find(|w| w[0] == name).map(|w| w[1]);
            let (id, ns, address) = (flag("-id")?, flag("-namespace")?, flag("-address")?);
            if !id.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            // containerd 1.6 `shim.SocketAddress`: /run/containerd/s/hex(sha256(ADDR/NS/ID)),
            // left behind when the shim is killed.
            let digest = sha2::Sha256::digest(format!("{address}/{ns}/{id}").as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            Some(Shim { container: id.to_string(), socket: Path::new("/run/containerd/s").join(hex) })
        })
        .collect()
}

/// What killed shims leave and an engine would have removed with the container: the
/// (empty, once its processes are dead) cgroups of the container (`docker/ID` in every v1
/// hierarchy, or in the v2 tree, with the cgroupfs driver) and the shim's socket.
fn remove_shim_leftovers(shims: &[Shim]) {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup").map(|d| d.flatten().map(|h| h.path()).collect()).unwrap_or_default();
    dirs.push(PathBuf::from("/sys/fs/cgroup"));
    for shim in shims {
        for h in &dirs {
            let _ = fs::remove_dir(h.join("docker").join(&shim.container));
        }
        if fs::symlink_metadata(&shim.socket).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
            let _ = fs::remove_file(&shim.socket);
        }
    }
}

/// Tears down a lab with engines: its containers, engines, leftover processes, namespaces
/// (`namespaces`), mounts and folder `root`. `dockerd` are the engine processes this process
/// started (reaped here). `graceful`: containers are removed and the engines stopped through
/// their API first; otherwise (a stale lab, whose engines may be half-way through a shutdown)
/// everything is killed at once. Best effort: every step runs, failures are printed.
pub(crate) fn teardown(root: &Path, namespaces: &[String], dockerd: &mut [Option<Child>], graceful: bool) {
    let machines: Vec<PathBuf> = fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.join("daemon.json").exists()).collect())
        .unwrap_or_default();

    // 1. What runs in the namespaces and is not an engine (agents) goes first, so that nothing
    //    recreates the containers being removed.
    let engine_pids = lab_processes(root);
    let agents: Vec<u32> = namespaces
        .iter()
        .filter_map(|ns| ip(&["netns", "pids", ns]).ok())
        .flat_map(|out| out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).collect::<Vec<_>>())
        .filter(|p| !engine_pids.contains(p) && *p != std::process::id())
        .collect();
    kill("KILL", agents);

    // 2. Every container of every engine, engines in parallel.
    std::thread::scope(|s| {
        for m in machines.iter().filter(|_| graceful) {
            let socket = m.join("docker.sock");
            if !socket.exists() || !pings(&socket) {
                continue;
            }
            s.spawn(move || {
                let host = format!("unix://{}", socket.display());
                let ids = run(Command::new("docker").args(["-H", &host, "ps", "-aq"]), Duration::from_secs(15));
                let ids: Vec<String> = match ids {
                    Ok(o) if o.status.success() => o.stdout.split_whitespace().map(String::from).collect(),
                    Ok(o) => return eprintln!("teardown: `docker ps` on {host}: {}", o.stderr.trim()),
                    Err(e) => return eprintln!("teardown: {e}"),
                };
                if !ids.is_empty() {
                    match run(Command::new("docker").args(["-H", &host, "rm", "-f", "-v"]).args(&ids), Duration::from_secs(60)) {
                        Ok(o) if o.status.success() => {}
                        Ok(o) => eprintln!("teardown: `docker rm -f` on {host}: {}", o.stderr.trim()),
                        Err(e) => eprintln!("teardown: {e}"),
                    }
                }
            });
        }
    });

    // 3. The engines: SIGTERM (dockerd stops its containerd), then SIGKILL what is left.
    let mut pids: Vec<u32> = dockerd.iter().flatten().map(Child::id).collect();
    for m in &machines {
        if let Some(pid) = fs::read_to_string(m.join("dockerd.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
            let named_ours = fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("{}/", root.display())));
            if named_ours && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    kill(if graceful { "TERM" } else { "KILL" }, pids.iter().copied());
    let deadline = Instant::now() + if graceful { ENGINE_STOP_TIMEOUT } else { Duration::ZERO };
    loop {
        for slot in dockerd.iter_mut() {
            if slot.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                *slot = None;
            }
        }
        if !pids.iter().any(|&p| alive(p)) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut killed_shims = Vec::new();
    loop {
        let left: BTreeSet<u32> = lab_processes(root).into_iter().filter(|&p| alive(p)).collect();
        killed_shims.extend(shims(&left));
        if left.is_empty() || Instant::now() >= deadline {
            if !left.is_empty() {
                eprintln!("teardown: processes of {} still alive after SIGKILL: {left:?}", root.display());
            }
            break;
        }
        kill("KILL", left);
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_shim_leftovers(&killed_shims);
    for slot in dockerd.iter_mut() {
        if let Some(mut c) = slot.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // 4. Whatever is still in the namespaces, then the namespaces.
    for ns in namespaces.iter().rev() {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            kill("KILL", pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
        if let Err(e) = ip(&["netns", "del", ns]) {
            eprintln!("warning: could not delete namespace {ns}: {e}");
        }
    }

    // 5. Mounts (the data roots, overlays, the containers' netns files, the UTS namespaces),
    //    deepest first and lazily: a busy one goes once its last user does.
    for point in mounts_under(root) {
        if let Err(e) = run(Command::new("umount").args(["-l", &point]), crate::CLI_TIMEOUT) {
            eprintln!("teardown: umount -l {point}: {e}");
        }
    }
    if root.exists() {
        if let Err(e) = fs::remove_dir_all(root) {
            eprintln!("warning: could not remove {}: {e} (mounts left: {:?})", root.display(), mounts_under(root));
        }
    }
}

// ------------------------------------------------------------------------------ the lab

impl Lab {
    /// A lab of `hosts` machines (see [`Lab::new`]), each with its own Docker Engine and
    /// hostname (`n1`, `n2`, …), started in parallel; returns once every engine answers, or
    /// the tail of the log of one that did not. Prints how long the start took. Agents that a
    /// [`crate::Cluster`] starts on a machine run in its UTS namespace and get
    /// `--docker-socket` of its engine. Images: [`Lab::load_images`].
    ///
    /// Build it in the thread that uses it: the engines stop when that thread ends.
    pub fn with_engines(hosts: usize) -> Result<Self, String> {
        assert!((1..=MAX_ENGINES_PER_LAB).contains(&hosts), "a lab with engines holds 1 to {MAX_ENGINES_PER_LAB} machines");
        let began = Instant::now();
        if let Some(why) = engines_unavailable() {
            return Err(why);
        }
        crate::delete_stale_namespaces();
        let (slot, lock) = claim_slot()?;
        let root = slot_root(slot);
        let prefix = slot_prefix(slot);
        let subnet = 200 + slot as u8; // 10.77.200+K.0/24 (the non-engine labs' formula may repeat it; labs are isolated)
        let engines = Engines { _lock: lock, slot, root: root.clone(), dockerd: Vec::new(), started_in: Duration::ZERO };
        let mut lab = Self::empty(&prefix, subnet);
        lab.engines = Some(engines);
        // On error from here, dropping `lab` tears down what was made.
        fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        lab.build(&prefix, hosts)?;
        lab.start_engines(slot, &root)?;
        let took = began.elapsed();
        if let Some(e) = lab.engines.as_mut() {
            e.started_in = took;
        }
        println!("lab {prefix}: {hosts} machines with their own Docker Engine up in {:.2} s", took.as_secs_f64());
        Ok(lab)
    }

    fn start_engines(&mut self, slot: usize, root: &Path) -> Result<(), String> {
        let driver = host_storage_driver();
        let setpriv = which("setpriv");
        let mut children = Vec::new();
        for (idx, host) in self.hosts.iter_mut().enumerate() {
            let i = idx + 1;
            let dir = root.join(format!("m{i}"));
            fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            fs::write(dir.join("daemon.json"), "{}\n").map_err(|e| format!("writing daemon.json: {e}"))?;
            let uts = dir.join("uts");
            fs::write(&uts, "").map_err(|e| format!("creating {}: {e}", uts.display()))?;
            let hostname = format!("n{i}");
            // `hostname` may not be installed; the kernel's file is the same call.
            crate::run_ok(
                Command::new("unshare")
                    .arg(format!("--uts={}", uts.display()))
                    .args(["sh", "-c", "echo \"$1\" > /proc/sys/kernel/hostname", "sh", &hostname]),
            )?;
            let engine = HostEngine {
                hostname,
                socket: dir.join("docker.sock"),
                uts,
                bip: format!("172.30.{}.1/24", slot * 16 + i),
                dir,
            };
            children.push(spawn_dockerd(host, &engine, slot, i, driver.as_deref(), setpriv.as_deref()));
            host.engine = Some(engine);
        }
        let mut first_err = None;
        let mut dockerd = Vec::new();
        for c in children {
            match c {
                Ok(c) => dockerd.push(Some(c)),
                Err(e) => {
                    first_err.get_or_insert(e);
                    dockerd.push(None);
                }
            }
        }
        if let Some(e) = self.engines.as_mut() {
            e.dockerd = dockerd;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.wait_engines()
    }

    /// Waits until every engine answers; fails with the log tail of one that exited or did
    /// not answer in time.
    fn wait_engines(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + ENGINE_START_TIMEOUT;
        let mut up = vec![false; self.hosts.len()];
        loop {
            for (i, host) in self.hosts.iter().enumerate() {
                let Some(engine) = &host.engine else { continue };
                if up[i] {
                    continue;
                }
                up[i] = pings(&engine.socket);
                let exited = self
                    .engines
                    .as_mut()
                    .and_then(|e| e.dockerd.get_mut(i))
                    .and_then(|c| c.as_mut())
                    .and_then(|c| c.try_wait().ok().flatten());
                if let (false, Some(status)) = (up[i], exited) {
                    return Err(format!(
                        "the Docker Engine of {} exited at start ({status}); tail of {}:\n{}",
                        engine.hostname,
                        engine.log_path().display(),
                        engine.log_tail(ENGINE_LOG_TAIL)
                    ));
                }
            }
            if up.iter().all(|&u| u) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let (i, host) = self.hosts.iter().enumerate().find(|(i, _)| !up[*i]).unwrap_or((0, &self.hosts[0]));
                let engine = host.engine.as_ref();
                return Err(format!(
                    "the Docker Engine of machine {} did not answer on {} within {ENGINE_START_TIMEOUT:?}; tail of its log:\n{}",
                    i + 1,
                    engine.map_or_else(String::new, |e| e.socket.display().to_string()),
                    engine.map_or_else(String::new, |e| e.log_tail(ENGINE_LOG_TAIL))
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The slot K of a lab with engines (its name is `shoalt-eK`).
    pub fn engine_slot(&self) -> Option<usize> {
        self.engines.as_ref().map(|e| e.slot)
    }

    /// Does this lab have an engine per machine?
    pub fn has_engines(&self) -> bool {
        self.engines.is_some()
    }

    /// How long [`Lab::with_engines`] took (zero for a lab without engines).
    pub fn started_in(&self) -> Duration {
        self.engines.as_ref().map_or(Duration::ZERO, |e| e.started_in)
    }

    /// Machine `i`'s engine (index from 0), in a lab with engines.
    pub fn engine(&self, i: usize) -> Option<&HostEngine> {
        self.hosts.get(i)?.engine.as_ref()
    }

    /// Machine `i`'s Docker socket (index from 0), in a lab with engines.
    pub fn docker_socket(&self, i: usize) -> Option<&Path> {
        self.engine(i).map(|e| e.socket.as_path())
    }

    /// Copies `images` (tags or ids) from the host's engine (`docker`'s default, so
    /// `DOCKER_HOST` if set) into every machine's engine: one `docker save` to a file, then a
    /// `docker load` per engine, in parallel. Returns how long it took.
    pub fn load_images(&self, images: &[&str]) -> Result<Duration, String> {
        let began = Instant::now();
        let Some(engines) = &self.engines else { return Err("this lab has no engines (use Lab::with_engines)".into()) };
        if images.is_empty() {
            return Ok(Duration::ZERO);
        }
        let tar = engines.root.join(format!("images-{}.tar", crate::unique()));
        let saved = run(Command::new("docker").arg("save").arg("-o").arg(&tar).args(images), IMAGE_LOAD_TIMEOUT)?;
        if !saved.status.success() {
            let _ = fs::remove_file(&tar);
            return Err(format!("`docker save {}` on the host's engine failed: {}", images.join(" "), saved.stderr.trim()));
        }
        let results: Vec<Result<Output, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .hosts
                .iter()
                .filter_map(|h| h.engine.as_ref())
                .map(|e| {
                    let tar = &tar;
                    s.spawn(move || run(e.docker_cli().args(["load", "-q", "-i"]).arg(tar), IMAGE_LOAD_TIMEOUT))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a `docker load` thread panicked".into()))).collect()
        });
        let _ = fs::remove_file(&tar);
        for (r, host) in results.into_iter().zip(self.hosts.iter()) {
            let name = host.engine.as_ref().map_or("?", |e| e.hostname.as_str());
            match r {
                Ok(o) if o.status.success() => {}
                Ok(o) => return Err(format!("`docker load` into the engine of {name} failed: {}", o.stderr.trim())),
                Err(e) => return Err(format!("`docker load` into the engine of {name}: {e}")),
            }
        }
        Ok(began.elapsed())
    }

    /// Tears the engines down (called by `Drop for Lab`).
    pub(crate) fn drop_engines(&mut self, engines: &mut Engines) {
        let namespaces = self.created.clone();
        teardown(&engines.root, &namespaces, &mut engines.dockerd, true);
        self.created.clear();
    }
}

fn spawn_dockerd(host: &LabHost, e: &HostEngine, slot: usize, i: usize, driver: Option<&str>, setpriv: Option<&Path>) -> Result<Child, String> {
    let log = fs::File::create(e.log_path()).map_err(|err| format!("creating {}: {err}", e.log_path().display()))?;
    let err = log.try_clone().map_err(|err| format!("dup log: {err}"))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", host.ns)).arg(format!("--uts={}", e.uts.display()));
    if let Some(setpriv) = setpriv {
        cmd.arg(setpriv).args(["--pdeathsig", "TERM", "--"]);
    }
    cmd.arg("dockerd")
        .arg("--config-file")
        .arg(e.dir.join("daemon.json"))
        .arg("--data-root")
        .arg(e.dir.join("root"))
        .arg("--exec-root")
        .arg(e.dir.join("exec"))
        .arg("--pidfile")
        .arg(e.dir.join("dockerd.pid"))
        .arg("--host")
        .arg(format!("unix://{}", e.socket.display()))
        .arg("--bip")
        .arg(&e.bip)
        // User-defined networks (not used by shoal yet) get distinct subnets too.
        .arg("--default-address-pool")
        .arg(format!("base=10.{}.{}.0/20,size=24", 128 + slot, i * 16));
    if let Some(d) = driver {
        cmd.args(["--storage-driver", d]);
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    cmd.env_remove("DOCKER_HOST");
    cmd.spawn().map_err(|err| format!("cannot start dockerd for {}: {err}", e.hostname))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two labs of one process (two test threads) never get one slot: the lock is per open
    /// file, not per process.
    #[test]
    fn two_claims_in_one_process_get_two_slots() {
        let (a, _lock_a) = claim_slot().unwrap_or_else(|e| panic!("{e}"));
        let (b, lock_b) = claim_slot().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b, "two claims got slot {a}");
        drop(lock_b);
        let (c, _lock_c) = claim_slot().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(c, a, "slot {a} is still held");
    }

    #[test]
    fn ping_of_a_missing_socket_is_false() {
        assert!(!pings(Path::new("/nonexistent/shoalt/docker.sock")));
    }
}
