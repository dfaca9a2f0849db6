//! Data parallelism on burn's collective operations (burn-collective): one worker thread per
//! device, each with a replica of the policy. Workers sum gradients with burn's all-reduce (within
//! the process and, through burn's global orchestrator, across machines) and the few numbers a
//! step shares: rollout metadata, loss statistics, token counts. No communication layer of
//! longrl's own.
//!
//! The launcher ([`launch`]) stays in the calling thread and supervises: a worker that returns an
//! error, panics, or waits in one collective operation longer than `timeout_s` stops the whole run
//! with an error naming that worker; the others are released (burn's collective server is reset)
//! and nothing waits forever. Rank 0 alone writes checkpoints and metrics.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use std::collections::VecDeque;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::{Error, Result};

/// `[distributed]`: the devices and machines of a data-parallel run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSection {
    /// This machine's devices, one worker (and replica) each, e.g. `["cuda:0", "cuda:1"]`; a CPU
    /// device may repeat (`["flex", "flex"]`). Empty: the single `--device` / `[run] device`.
    pub devices: Vec<String>,
    /// Machines in the run (each with the same number of devices).
    pub nodes: usize,
    /// This machine's rank, 0-based; rank 0 hosts burn's global orchestrator.
    pub node_rank: usize,
    /// `HOST:PORT` of the orchestrator on node rank 0 (needed when `nodes > 1`).
    pub coordinator: Option<String>,
    /// The host name or address other machines reach this one at; default: the coordinator's
    /// host on node rank 0, else this machine's host name.
    pub node_host: Option<String>,
    /// Port of this machine's tensor data service; default: the coordinator's port + 1 +
    /// `node_rank` (distinct on one host, so a loopback run needs no setting).
    pub data_port: Option<u16>,
    /// Seconds a worker may wait in one collective operation before the run is stopped (NCCL's
    /// default is 1800). Covers the slowest peer's generation and rank 0's checkpoint writes.
    pub timeout_s: f64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            node_host: None,
            data_port: None,
            timeout_s: 1800.0,
        }
    }
}

/// The machines of a multi-machine run, as burn's global collective needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalPlan {
    /// Machines in the run.
    pub nodes: usize,
    /// This machine's rank.
    pub node_rank: usize,
    /// Orchestrator host.
    pub coordinator_host: String,
    /// Orchestrator port.
    pub coordinator_port: u16,
    /// This machine's reachable host.
    pub node_host: String,
    /// This machine's tensor data service port.
    pub data_port: u16,
}

/// A resolved `[distributed]` section: this process's devices and, for several machines, where
/// they meet.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// This process's devices, one worker each.
    pub devices: Vec<DeviceSpec>,
    /// The machines (none: a single-process run).
    pub global: Option<GlobalPlan>,
    /// The longest wait in one collective operation.
    pub timeout: Duration,
}

impl Plan {
    /// A single-device run.
    pub fn single(device: DeviceSpec) -> Self {
        Self {
            devices: vec![device],
            global: None,
            timeout: Duration::from_secs_f64(DistributedSection::default().timeout_s),
        }
    }

    /// Workers in the whole run (all machines).
    pub fn world(&self) -> usize {
        self.devices.len() * self.global.as_ref().map_or(1, |g| g.nodes)
    }

    /// Rank of this process's first worker.
    fn first_rank(&self) -> usize {
        self.global.as_ref().map_or(0, |g| g.node_rank) * self.devices.len()
    }
}

fn split_host_port(s: &str, field: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::Invalid(format!(
            "{field} = `{s}`: expected HOST:PORT, e.g. 10.0.0.1:29500"
        ))
    };
    let s = s.strip_prefix("ws://").unwrap_or(s).trim_end_matches('/');
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn this_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

impl DistributedSection {
    /// Resolves the section: `fallback` is the device when `devices` is empty. Every device must
    /// use the same backend (burn runs one collective per backend type).
    pub fn plan(&self, fallback: DeviceSpec) -> Result<Plan> {
        let devices = if self.devices.is_empty() {
            vec![fallback]
        } else {
            self.devices
                .iter()
                .map(|d| {
                    d.parse::<DeviceSpec>()
                        .map_err(|e| Error::Invalid(format!("distributed.devices: {e}")))
                })
                .collect::<Result<Vec<_>>>()?
        };
        if let Some(other) = devices.iter().find(|d| d.feature() != devices[0].feature()) {
            return Err(Error::Invalid(format!(
                "distributed.devices: `{}` and `{other}` use different backends; a run uses one \
                 backend on all its devices",
                devices[0]
            )));
        }
        if self.timeout_s.is_nan() || self.timeout_s <= 0.0 {
            return Err(Error::Invalid(format!(
                "distributed.timeout_s = {}: expected a positive number of seconds",
                self.timeout_s
            )));
        }
        if self.nodes == 0 {
            return Err(Error::Invalid(
                "distributed.nodes = 0: expected at least 1".into(),
            ));
        }
        if self.node_rank >= self.nodes {
            return Err(Error::Invalid(format!(
                "distributed.node_rank = {}: expected 0..{} (nodes = {})",
                self.node_rank, self.nodes, self.nodes
            )));
        }
        let global = if self.nodes > 1 {
            let coordinator = self.coordinator.as_deref().ok_or_else(|| {
                Error::Invalid(format!(
                    "distributed.nodes = {}: set distributed.coordinator (--coordinator HOST:PORT), \
                     the address of node rank 0",
                    self.nodes
                ))
            })?;
            let (host, port) = split_host_port(coordinator, "distributed.coordinator")?;
            let node_host = match &self.node_host {
                Some(h) => h.clone(),
                None if self.node_rank == 0 => host.clone(),
                None if host == "127.0.0.1" || host == "localhost" => host.clone(),
                None => this_host_name(),
            };
            let data_port = match self.data_port {
                Some(p) => p,
                None => port.checked_add(1 + self.node_rank as u16).ok_or_else(|| {
                    Error::Invalid(
                        "distributed.coordinator: port too high to derive data ports; set \
                             distributed.data_port"
                            .into(),
                    )
                })?,
            };
            Some(GlobalPlan {
                nodes: self.nodes,
                node_rank: self.node_rank,
                coordinator_host: host,
                coordinator_port: port,
                node_host,
                data_port,
            })
        } else {
            None
        };
        Ok(Plan {
            devices,
            global,
            timeout: Duration::from_secs_f64(self.timeout_s),
        })
    }
}

/// What a local worker is doing, as the launcher sees it.
#[derive(Debug, Clone)]
enum PeerState {
    Working,
    Waiting { op: String, since: Instant },
    Done,
}

/// State shared by the launcher and its workers.
struct Supervisor {
    first_rank: usize,
    nodes: usize,
    node_rank: usize,
    timeout: Duration,
    peers: Mutex<Vec<PeerState>>,
    failure: Mutex<Option<String>>,
    reset: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Supervisor {
    fn set(&self, local: usize, state: PeerState) {
        if let Ok(mut p) = self.peers.lock() {
            p[local] = state;
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Records the run's first failure and releases the workers waiting in collectives.
    fn fail(&self, message: String) -> String {
        let first = {
            let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert(message).clone()
        };
        if let Some(reset) = self
            .reset
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            // burn's collective server may already be gone (a lost peer ends it), and then
            // resetting it panics; there is nothing left to release in that case.
            let _ = catch_unwind(AssertUnwindSafe(reset));
        }
        first
    }

    /// Who is to blame when this machine's collective is lost or stalls with no local failure.
    fn remote_culprit(&self) -> String {
        let others: Vec<String> = (0..self.nodes)
            .filter(|&n| n != self.node_rank)
            .map(|n| n.to_string())
            .collect();
        format!(
            "a worker on node rank {} stopped or lost its connection",
            others.join(", ")
        )
    }

    /// A worker that has waited past the timeout, and who it waits for.
    fn overdue(&self) -> Option<String> {
        let peers = self.peers.lock().ok()?.clone();
        let (local, op, since) = peers.iter().enumerate().find_map(|(i, p)| match p {
            PeerState::Waiting { op, since } if since.elapsed() > self.timeout => {
                Some((i, op.clone(), *since))
            }
            _ => None,
        })?;
        let missing: Vec<String> = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !matches!(p, PeerState::Waiting { op: o, .. } if *o == op))
            .map(|(i, _)| format!("worker {}", self.first_rank + i))
            .collect();
        let who = if missing.is_empty() && self.nodes > 1 {
            format!(
                "every worker of this machine (node rank {}) is waiting, so {}",
                self.node_rank,
                self.remote_culprit()
            )
        } else {
            format!("{} never reached it", missing.join(", "))
        };
        Some(format!(
            "worker {} waited {:.0} s in {op} (distributed.timeout_s = {}): {who}",
            self.first_rank + local,
            since.elapsed().as_secs_f64(),
            self.timeout.as_secs_f64()
        ))
    }
}

/// One worker's view of a run: its rank among all workers, its device, and the collective
/// operations it shares with the others. A single-device run has a worker whose operations
/// return their input, so the single-device path costs nothing.
#[derive(Clone)]
pub struct Worker {
    /// Rank among all workers of all machines (0 writes checkpoints and metrics).
    pub rank: usize,
    /// Workers in the run.
    pub world: usize,
    /// This worker's device.
    pub device: DeviceSpec,
    local: usize,
    supervisor: Option<Arc<Supervisor>>,
    config: Option<CollectiveConfig>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Worker {{ rank: {}, world: {}, device: {} }}",
            self.rank, self.world, self.device
        )
    }
}

impl Worker {
    /// The only worker of a single-device run.
    pub fn single(device: DeviceSpec) -> Self {
        Self {
            rank: 0,
            world: 1,
            device,
            local: 0,
            supervisor: None,
            config: None,
        }
    }

    /// Whether this worker writes the run's files (rank 0).
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Whether item `i` of a list that every worker sees in the same order is this worker's:
    /// items are dealt round-robin, so consecutive items (a mini-batch's groups) spread over
    /// all workers.
    pub fn owns(&self, i: usize) -> bool {
        i % self.world == self.rank
    }

    fn peer(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    /// Joins the run's collective on backend `B` (the inner backend under autodiff): waits until
    /// every worker of every machine has joined. Call once per worker before training.
    pub fn join<B: Backend>(&self, device: &B::Device) -> Result<()> {
        let (Some(sup), Some(config)) = (&self.supervisor, &self.config) else {
            return Ok(());
        };
        *sup.reset.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Box::new(collective::reset_collective::<B>));
        self.collective("joining the run", || {
            collective::register::<B>(self.peer(), device.clone(), config.clone())
        })?;
        // Every machine must bring as many workers as this one.
        let world = self.sum::<B>("counting workers", vec![1.0], device)?[0] as usize;
        if world != self.world {
            return Err(Error::Distributed(format!(
                "worker {}: the run has {world} workers but this machine expected {} \
                 (every machine needs the same number of devices)",
                self.rank, self.world
            )));
        }
        Ok(())
    }

    /// Leaves the collective after training (every worker calls it).
    pub fn leave<B: Backend>(&self, device: &B::Device) -> Result<()> {
        let Some(sup) = &self.supervisor else {
            return Ok(());
        };
        if sup.nodes > 1 {
            // burn's global finish races with the machine that hosts the orchestrator exiting
            // (the other side's websocket close then panics and its finish never returns). Once
            // every worker is past this barrier the run is over: the connections end with the
            // process.
            return self.barrier::<B>("finishing the run", device);
        }
        self.collective("leaving the run", || {
            collective::finish_collective::<B>(self.peer())
        })
    }

    /// Joins the run on backend `B` (the inner backend under autodiff), runs `f`, and leaves.
    pub fn run<B: Backend, T>(
        &self,
        device: &B::Device,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.join::<B>(device)?;
        let out = f()?;
        self.leave::<B>(device)?;
        Ok(out)
    }

    /// Runs one collective operation under the launcher's watch.
    fn collective<T>(
        &self,
        op: &str,
        f: impl FnOnce() -> std::result::Result<T, collective::CollectiveError>,
    ) -> Result<T> {
        let Some(sup) = &self.supervisor else {
            return Err(Error::Distributed(format!(
                "{op}: a single-device worker has no collective"
            )));
        };
        if let Some(failure) = sup.failure() {
            return Err(Error::Distributed(failure));
        }
        sup.set(
            self.local,
            PeerState::Waiting {
                op: op.to_string(),
                since: Instant::now(),
            },
        );
        let out = f();
        sup.set(self.local, PeerState::Working);
        out.map_err(|e| {
            Error::Distributed(sup.failure().unwrap_or_else(|| {
                let cause = match e {
                    // The local server ends when a connection to another machine breaks.
                    collective::CollectiveError::LocalServerMissing
                    | collective::CollectiveError::Global(_)
                        if sup.nodes > 1 =>
                    {
                        format!(" ({})", sup.remote_culprit())
                    }
                    _ => String::new(),
                };
                format!(
                    "worker {} ({}): {op} failed: {e:?}{cause}",
                    self.rank, self.device
                )
            }))
        })
    }

    /// Sums `values` over all workers (f32: counts up to 2^24 are exact); `what` names the
    /// operation in errors.
    pub fn sum<B: Backend>(
        &self,
        what: &str,
        values: Vec<f32>,
        device: &B::Device,
    ) -> Result<Vec<f32>> {
        if self.supervisor.is_none() || values.is_empty() {
            return Ok(values);
        }
        let n = values.len();
        // burn's ring all-reduce across machines splits a tensor into one slice per machine.
        let mut values = values;
        values.resize(n.max(self.world), 0.0);
        let len = values.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device);
        let out = self.collective(what, || {
            collective::all_reduce::<B>(
                self.peer(),
                t.into_primitive().tensor(),
                ReduceOperation::Sum,
            )
        })?;
        let out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out)).slice(0..n);
        out.into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| Error::Distributed(format!("{what}: {e:?}")))
    }

    /// Sums `values` (f64 kept on a single device) over all workers.
    pub fn sum_f64<B: Backend>(
        &self,
        what: &str,
        values: Vec<f64>,
        device: &B::Device,
    ) -> Result<Vec<f64>> {
        if self.supervisor.is_none() {
            return Ok(values);
        }
        let v = values.iter().map(|&x| x as f32).collect();
        Ok(self
            .sum::<B>(what, v, device)?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    /// Waits until every worker gets here (e.g. until rank 0 has written a file the others read).
    pub fn barrier<B: Backend>(&self, what: &str, device: &B::Device) -> Result<()> {
        self.sum::<B>(what, vec![0.0], device).map(|_| ())
    }

    /// Sums the gradients of `module`'s parameters over all workers, in buckets of at most
    /// [`BUCKET_ELEMENTS`] values (one all-reduce each, like PyTorch DDP's buckets) taken in the
    /// module's parameter order, which every replica shares. A trainable parameter without a
    /// gradient counts as zeros, so workers with nothing to train on still take part; frozen
    /// parameters (a LoRA run's base) are not exchanged.
    pub fn sum_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        what: &str,
        module: &M,
        mut grads: GradientsParams,
        device: &B::Device,
    ) -> Result<GradientsParams> {
        if self.supervisor.is_none() {
            return Ok(grads);
        }
        let mut flat = Flatten::<B> {
            grads: &mut grads,
            parts: Vec::new(),
        };
        module.visit(&mut flat);
        let parts = flat.parts;
        let mut reduced: VecDeque<Tensor<B::InnerBackend, 1>> = VecDeque::new();
        let mut start = 0;
        while start < parts.len() {
            let mut end = start;
            let mut len = 0;
            while end < parts.len()
                && (end == start || len + parts[end].dims()[0] <= BUCKET_ELEMENTS)
            {
                len += parts[end].dims()[0];
                end += 1;
            }
            let sizes: Vec<usize> = parts[start..end].iter().map(|t| t.dims()[0]).collect();
            let mut bucket = Tensor::cat(parts[start..end].to_vec(), 0);
            // burn's ring all-reduce across machines splits a tensor into one slice per machine.
            if len < self.world {
                let pad = Tensor::zeros([self.world - len], device);
                bucket = Tensor::cat(vec![bucket, pad], 0);
            }
            let summed = self.collective(what, || {
                collective::all_reduce::<B::InnerBackend>(
                    self.peer(),
                    bucket.into_primitive().tensor(),
                    ReduceOperation::Sum,
                )
            })?;
            let summed =
                Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed));
            let mut at = 0;
            for n in sizes {
                reduced.push_back(summed.clone().slice(at..at + n));
                at += n;
            }
            start = end;
        }
        let mut out = GradientsParams::new();
        module.visit(&mut Unflatten::<B> {
            parts: reduced,
            grads: &mut out,
        });
        Ok(out)
    }
}

/// Values per gradient all-reduce (128 MiB of f32).
pub const BUCKET_ELEMENTS: usize = 32 << 20;

/// Takes every trainable parameter's gradient (zeros where it has none) as a flat tensor, in
/// module order.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        let grad = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| param.val().inner().zeros_like());
        let n = grad.shape().num_elements();
        self.parts.push(grad.reshape([n]));
    }
}

/// Gives every trainable parameter its slice of the summed buckets back, in module order.
struct Unflatten<'a, B: AutodiffBackend> {
    parts: VecDeque<Tensor<B::InnerBackend, 1>>,
    grads: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        if let Some(flat) = self.parts.pop_front() {
            let shape: [usize; D] = param.val().dims();
            self.grads
                .register::<B::InnerBackend, D>(param.id, flat.reshape(shape));
        }
    }
}

/// One data-parallel run per process at a time: burn keeps one collective server per backend.
static SESSION: Mutex<()> = Mutex::new(());

/// The orchestrator's port, once node rank 0 has started it in this process.
static ORCHESTRATOR: OnceLock<u16> = OnceLock::new();

fn start_orchestrator(port: u16) -> Result<()> {
    if let Some(&p) = ORCHESTRATOR.get() {
        return if p == port {
            Ok(())
        } else {
            Err(Error::Distributed(format!(
                "this process already hosts an orchestrator on port {p}, not {port}"
            )))
        };
    }
    // Fail early and clearly when the port is taken (burn's server would only log it).
    std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        Error::Distributed(format!(
            "distributed.coordinator: cannot listen on port {port} for the orchestrator: {e}"
        ))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Distributed(format!("starting the orchestrator: {e}")))?;
    std::thread::Builder::new()
        .name("longrl-orchestrator".into())
        .spawn(move || {
            runtime.block_on(burn_collective::start_global_orchestrator(port));
            // The orchestrator returns on Ctrl-C or SIGTERM, whose handlers it installed in
            // place of the default ones: end the process as those signals would have.
            log::error!("the orchestrator stopped (interrupted, or its port could not be served): stopping the run");
            std::process::exit(130);
        })
        .map_err(|e| Error::Distributed(format!("starting the orchestrator: {e}")))?;
    let _ = ORCHESTRATOR.set(port);
    Ok(())
}

fn collective_config(plan: &Plan) -> Result<CollectiveConfig> {
    let mut config = CollectiveConfig::default().with_num_devices(plan.devices.len());
    if let Some(g) = &plan.global {
        let address = |host: &str, port: u16, field: &str| {
            burn_communication::Address::from_str(&format!("ws://{host}:{port}")).map_err(|e| {
                Error::Invalid(format!("{field}: `{host}:{port}` is not an address: {e:?}"))
            })
        };
        config = config
            .with_num_nodes(g.nodes as u32)
            .with_global_address(address(
                &g.coordinator_host,
                g.coordinator_port,
                "distributed.coordinator",
            )?)
            .with_node_address(address(&g.node_host, g.data_port, "distributed.node_host")?)
            .with_data_service_port(g.data_port);
    }
    Ok(config)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// Runs `task` on every device of `plan`, one thread each, and returns the first worker's result.
///
/// A single device runs `task` in the calling thread with no collective. Otherwise the calling
/// thread supervises: the first worker error, panic or collective timeout is returned (naming the
/// worker) after the other workers are released; a worker that cannot be released in 10 s is
/// left behind (the process is expected to exit on the error).
pub fn launch<T, F>(plan: &Plan, task: F) -> Result<T>
where
    T: Send + 'static,
    F: Fn(Worker) -> Result<T> + Send + Sync + 'static,
{
    if plan.world() == 1 {
        return task(Worker::single(plan.devices[0]));
    }
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = &plan.global {
        if g.node_rank == 0 {
            start_orchestrator(g.coordinator_port)?;
        }
    }
    let config = collective_config(plan)?;
    let local = plan.devices.len();
    let supervisor = Arc::new(Supervisor {
        first_rank: plan.first_rank(),
        nodes: plan.global.as_ref().map_or(1, |g| g.nodes),
        node_rank: plan.global.as_ref().map_or(0, |g| g.node_rank),
        timeout: plan.timeout,
        peers: Mutex::new(vec![PeerState::Working; local]),
        failure: Mutex::new(None),
        reset: Mutex::new(None),
    });
    let task = Arc::new(task);
    let (tx, rx) = mpsc::channel::<(usize, std::thread::Result<Result<T>>)>();
    for (i, &device) in plan.devices.iter().enumerate() {
        let worker = Worker {
            rank: plan.first_rank() + i,
            world: plan.world(),
            device,
            local: i,
            supervisor: Some(supervisor.clone()),
            config: Some(config.clone()),
        };
        let (task, tx) = (task.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("longrl-worker-{}", worker.rank))
            .spawn(move || {
                let out = catch_unwind(AssertUnwindSafe(|| task(worker)));
                let _ = tx.send((i, out));
            })
            .map_err(|e| Error::Distributed(format!("starting worker {i}: {e}")))?;
    }
    drop(tx);
    let describe = |i: usize| format!("worker {} ({})", plan.first_rank() + i, plan.devices[i]);
    let mut results: Vec<Option<T>> = (0..local).map(|_| None).collect();
    let mut done = 0;
    let failure = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((i, Ok(Ok(value)))) => {
                supervisor.set(i, PeerState::Done);
                results[i] = Some(value);
                done += 1;
                if done == local {
                    return results[0]
                        .take()
                        .ok_or_else(|| Error::Distributed("worker 0 returned nothing".into()));
                }
            }
            Ok((i, Ok(Err(e)))) => {
                supervisor.set(i, PeerState::Done);
                // A worker released because another failed reports that failure, not its own.
                break supervisor.failure().unwrap_or_else(|| match e {
                    // A collective's own error already names the worker.
                    Error::Distributed(message) => message,
                    e => format!("{} failed: {e}", describe(i)),
                });
            }
            Ok((i, Err(panic))) => {
                supervisor.set(i, PeerState::Done);
                break format!("{} panicked: {}", describe(i), panic_message(panic));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(message) = supervisor.overdue() {
                    break message;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break "every worker stopped without a result".to_string();
            }
        }
    };
    let message = supervisor.fail(failure);
    log::error!("{message}; stopping the run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while done < local {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => done += 1,
            Err(_) => break,
        }
    }
    Err(Error::Distributed(format!(
        "{message}; the run stopped (the last checkpoint is intact)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_resolve_and_name_bad_fields() {
        let s = DistributedSection::default();
        let p = s.plan(DeviceSpec::Flex).unwrap();
        assert_eq!(p.world(), 1);
        let two = DistributedSection {
            devices: vec!["flex".into(), "cpu".into()],
            ..DistributedSection::default()
        };
        assert_eq!(two.plan(DeviceSpec::Flex).unwrap().world(), 2);
        let nodes = DistributedSection {
            nodes: 2,
            node_rank: 1,
            coordinator: Some("127.0.0.1:29500".into()),
            ..DistributedSection::default()
        };
        let g = nodes.plan(DeviceSpec::Flex).unwrap().global.unwrap();
        assert_eq!((g.data_port, g.node_host.as_str()), (29502, "127.0.0.1"));
        let e = DistributedSection {
            nodes: 2,
            ..DistributedSection::default()
        }
        .plan(DeviceSpec::Flex)
        .unwrap_err()
        .to_string();
        assert!(e.contains("distributed.coordinator"), "{e}");
        let e = DistributedSection {
            nodes: 2,
            node_rank: 2,
            coordinator: Some("h:1".into()),
            ..DistributedSection::default()
        }
        .plan(DeviceSpec::Flex)
        .unwrap_err()
        .to_string();
        assert!(e.contains("distributed.node_rank = 2"), "{e}");
        let e = split_host_port("nohost", "distributed.coordinator")
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = DistributedSection {
            devices: vec!["tpu".into()],
            ..DistributedSection::default()
        }
        .plan(DeviceSpec::Flex)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("distributed.devices") && e.contains("tpu"),
            "{e}"
        );
    }
}
