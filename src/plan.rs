//! `longrl plan`: the per-device memory a training config needs, computed from the parsed config
//! and the model's `config.json` alone (no weights read, no device touched).
//!
//! Each phase of a run (SFT, an RL stage's rollout and update, a pipeline's evaluation) is
//! planned as the sum of what lives on the device at its high-water mark: weights (by dtype),
//! gradients and AdamW moments (of the trainable parameters only: every weight, or the LoRA
//! adapters), the bf16 compute copy, activations of the largest micro-batch (plain or with
//! per-layer gradient checkpointing), the rollout KV cache, the KL reference model and a fixed
//! runtime share. The activation model follows what the autodiff graph keeps (`src/kernels/`:
//! attention and the LM head are blockwise and memory-linear; a checkpointed layer keeps its
//! input) and is calibrated against measured peaks (BENCHMARKS.md, "Memory plan (issue 20)").

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::ModelSection;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::model::{BaseDtype, LoraConfig, Qwen2Config};
use crate::pipeline::PipelineFile;
use crate::rl::{RlConfig, RlFile};
use crate::sft::{SftConfig, SftFile};

const GIB: f64 = (1u64 << 30) as f64;

/// Factor between the values the model's layers produce per token and what a plain micro-batch
/// adds to the peak (the graph frees or reuses some), calibrated on the 0.39B shape on the CPU.
pub const PLAIN_ACTIVATION_FACTOR: f64 = 1.0;
/// The same factor with per-layer gradient checkpointing.
pub const CHECKPOINTED_ACTIVATION_FACTOR: f64 = 1.0;
/// Host buffers of a checkpoint save per byte of weights and optimiser state (their copies to
/// host data and the serialised file), measured on the CPU; on a GPU they are host memory.
pub const SAVE_BUFFER_FACTOR: f64 = 2.6;
/// Process memory besides tensors on a CPU device: binary, threads, tokenizer, data.
pub const CPU_RUNTIME_BYTES: u64 = 64 << 20;
/// Device memory besides tensors on a GPU: CUDA context, kernels, allocator pools (estimated).
pub const GPU_RUNTIME_BYTES: u64 = 1 << 30;
/// Rows of the LM-head buffers at once: the log-softmax keeps about this many `[rows, vocab]`
/// f32 buffers alive at its peak (logits, probabilities, their gradient).
const LM_HEAD_BUFFERS: u64 = 2;

/// What `plan` is asked: the device, the data-parallel width and the device's memory.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The device kind the plan is for (`None`: the config's `[run] device`, else the best
    /// compiled-in one).
    pub device: Option<DeviceSpec>,
    /// Data-parallel workers (overrides `[distributed] devices` times `nodes`).
    pub devices: Option<usize>,
    /// Memory of one device in GiB (default: the machine's RAM for CPU devices).
    pub device_memory_gib: Option<f64>,
    /// A `config.json` (or its folder) to plan with instead of `[model] path`'s.
    pub model_config: Option<PathBuf>,
}

/// One training phase: a forward and backward over micro-batches, then an optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    /// Longest sequence one micro-batch may hold alone (prompt + response tokens).
    pub max_sequence: usize,
    /// Padded tokens per micro-batch (`micro_batch_tokens`).
    pub micro_batch_tokens: usize,
    /// Sequences per optimiser step over all workers (their share bounds a worker's batch).
    pub sequences_per_step: usize,
    /// Per-layer gradient checkpointing.
    pub gradient_checkpointing: bool,
    /// bf16 compute.
    pub bf16: bool,
    /// LM-head rows at once.
    pub logits_chunk: usize,
    /// Whether the frozen KL reference is resident.
    pub reference: bool,
}

/// One generation phase: batched prefill and decode over a preallocated KV cache.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSpec {
    /// Prompts per generation batch over all workers.
    pub prompts: usize,
    /// Prompts decoded together in one engine call.
    pub prompts_per_call: usize,
    /// Samples per prompt.
    pub samples: usize,
    /// Cache positions: longest prompt + most new tokens.
    pub capacity: usize,
    /// Prompt columns prefilled per forward pass.
    pub prefill_chunk: usize,
    /// Whether the training state (optimiser moments) stays resident (RL rollouts), or only the
    /// weights are loaded (evaluation).
    pub training_state: bool,
    /// Whether the frozen KL reference is resident.
    pub reference: bool,
}

/// A phase to plan.
#[derive(Debug, Clone, PartialEq)]
pub enum PhaseSpec {
    /// Forward, backward and optimiser step.
    Train(TrainSpec),
    /// Rollouts or evaluation.
    Generate(GenerateSpec),
}

/// What a config asks of one device, phase by phase.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The config file's kind: `sft`, `rl` or `pipeline`.
    pub kind: &'static str,
    /// `[model]` (its `lora` and `base_dtype` decide what trains and how weights are held).
    pub model: ModelSection,
    /// Named phases in run order.
    pub phases: Vec<(String, PhaseSpec)>,
    /// Data-parallel workers from `[distributed]` (devices x nodes; 1 without it).
    pub world: usize,
    /// `[run] device`.
    pub device: Option<String>,
}

fn world_of(d: &crate::distributed::DistributedSection) -> usize {
    d.devices.len().max(1) * d.nodes.max(1)
}

fn sft_phase(cfg: &SftConfig) -> PhaseSpec {
    PhaseSpec::Train(TrainSpec {
        max_sequence: cfg.max_length,
        micro_batch_tokens: cfg.micro_batch_tokens,
        sequences_per_step: cfg.batch_size,
        gradient_checkpointing: cfg.gradient_checkpointing,
        bf16: cfg.bf16,
        logits_chunk: cfg.logits_chunk,
        reference: false,
    })
}

/// The RL phases of one stage: its rollouts and its update.
fn rl_phases(cfg: &RlConfig, name: &str, lora: bool) -> Vec<(String, PhaseSpec)> {
    let reference = cfg.loss.beta > 0.0 && !lora;
    let rollout = GenerateSpec {
        prompts: cfg.gen_batch(),
        prompts_per_call: cfg.rollout_batch_size,
        samples: cfg.num_generations,
        capacity: cfg.max_prompt_length + cfg.max_response_length,
        prefill_chunk: cfg.prefill_chunk,
        training_state: true,
        reference,
    };
    let update = TrainSpec {
        max_sequence: cfg.max_prompt_length + cfg.max_response_length,
        micro_batch_tokens: cfg.micro_batch_tokens,
        sequences_per_step: cfg.ppo_mini_batch_size * cfg.num_generations,
        gradient_checkpointing: cfg.gradient_checkpointing,
        bf16: cfg.bf16,
        logits_chunk: cfg.logits_chunk,
        reference,
    };
    vec![
        (format!("{name} rollout"), PhaseSpec::Generate(rollout)),
        (format!("{name} update"), PhaseSpec::Train(update)),
    ]
}

impl Workload {
    /// The phases of an SFT config.
    pub fn from_sft(file: &SftFile) -> Self {
        Self {
            kind: "sft",
            model: file.model.clone(),
            phases: vec![("sft".into(), sft_phase(&file.sft))],
            world: world_of(&file.distributed),
            device: file.run.device.clone(),
        }
    }

    /// The phases of an RL config.
    pub fn from_rl(file: &RlFile) -> Self {
        Self {
            kind: "rl",
            model: file.model.clone(),
            phases: rl_phases(&file.rl, "rl", file.model.lora.is_some()),
            world: world_of(&file.distributed),
            device: file.run.device.clone(),
        }
    }

    /// The phases of a pipeline config: evaluation, warm-up SFT, then every stage's rollout and
    /// update (stage lengths replace `[rl]`'s).
    pub fn from_pipeline(file: &PipelineFile) -> Self {
        let longest = file.stages.iter().map(|s| s.max_input_tokens).max();
        let mut phases = vec![(
            "eval".to_string(),
            PhaseSpec::Generate(GenerateSpec {
                prompts: file.eval.batch_size,
                prompts_per_call: file.eval.batch_size,
                samples: file.eval.n.max(1),
                capacity: longest.unwrap_or(0) + file.eval.max_new_tokens,
                prefill_chunk: file.eval.prefill_chunk,
                training_state: false,
                reference: false,
            }),
        )];
        if let Some(sft) = &file.sft {
            phases.push(("sft".into(), sft_phase(sft)));
        }
        for (k, stage) in file.stages.iter().enumerate() {
            let mut cfg = file.rl.clone();
            cfg.max_prompt_length = stage.max_input_tokens;
            cfg.max_response_length = stage.max_output_tokens;
            let name = stage.name.clone().unwrap_or(format!("stage{}", k + 1));
            phases.extend(rl_phases(&cfg, &name, file.model.lora.is_some()));
        }
        Self {
            kind: "pipeline",
            model: file.model.clone(),
            phases,
            world: world_of(&file.distributed),
            device: file.run.device.clone(),
        }
    }

    /// Reads a config file of any kind (`[[stages]]`: pipeline; `[rl]`: RL; `[sft]`: SFT) with
    /// its paths resolved, as `sft`, `rl` and `pipeline` read it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: toml::Value = crate::config::load_toml(path)?;
        let none = crate::config::Overrides::default();
        let has = |k: &str| value.get(k).is_some();
        if has("stages") {
            Ok(Self::from_pipeline(&crate::cli::load_pipeline_file(
                path, &none,
            )?))
        } else if has("rl") {
            Ok(Self::from_rl(&crate::cli::load_rl_file(path, &none)?))
        } else if has("sft") {
            Ok(Self::from_sft(&crate::cli::load_sft_file(path, &none)?))
        } else {
            Err(Error::Invalid(format!(
                "{}: not a training config: expected [sft], [rl] or [[stages]] (pipeline)",
                path.display()
            )))
        }
    }
}

/// Bytes of one phase at its high-water mark, by what holds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseBytes {
    /// The phase (`sft`, `stage1 rollout`, `stage2 update`, `eval`).
    pub name: String,
    /// Frozen or trained weights as held (f32 master weights, or the base in its dtype plus
    /// f32 adapters).
    pub weights_bytes: u64,
    /// The bf16 copies of the weights cast inside the graph (bf16 compute from f32 weights).
    pub compute_copy_bytes: u64,
    /// f32 gradients of the trainable parameters (one micro-batch's and the accumulated copy).
    pub gradients_bytes: u64,
    /// AdamW's two f32 moments per trainable parameter.
    pub optimizer_bytes: u64,
    /// Activations of the largest micro-batch as configured.
    pub activations_bytes: u64,
    /// The same without gradient checkpointing.
    pub activations_plain_bytes: u64,
    /// The same with per-layer gradient checkpointing.
    pub activations_checkpointed_bytes: u64,
    /// Padded tokens of the largest micro-batch (training phases).
    pub micro_batch_tokens: usize,
    /// The rollout or evaluation KV cache (and the prefill's working set).
    pub kv_cache_bytes: u64,
    /// Sequences x positions of that cache.
    pub kv_sequences: usize,
    /// The frozen KL reference copy (full fine-tuning with `beta > 0`).
    pub reference_bytes: u64,
    /// Runtime besides tensors (CUDA context, allocator pools; on the CPU the process itself).
    pub runtime_bytes: u64,
    /// Training phases on the CPU: the serialisation buffers of a checkpoint save (weights and
    /// optimiser state copied and written), on top of the weights and optimiser state.
    pub checkpoint_save_bytes: u64,
    /// The phase's peak on one device: the sum of the above, or the checkpoint save's when larger.
    pub peak_bytes: u64,
}

/// The plan of a config on one device.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// `sft`, `rl` or `pipeline`.
    pub config_kind: String,
    /// The `config.json` planned from.
    pub model_config: PathBuf,
    /// All parameters of the model.
    pub parameters: u64,
    /// Parameters that train (every one, or the LoRA adapters').
    pub trainable_parameters: u64,
    /// Bytes per frozen-base weight (4 without LoRA).
    pub weight_dtype_bytes: usize,
    /// The device planned for.
    pub device: String,
    /// Data-parallel workers.
    pub devices: usize,
    /// One device's memory, when known.
    pub device_memory_bytes: Option<u64>,
    /// Per-device bytes of every phase.
    pub phases: Vec<PhaseBytes>,
    /// The largest phase peak.
    pub peak_bytes: u64,
    /// The phase that sets it.
    pub peak_phase: String,
    /// Whether the peak fits the device memory (`None`: memory unknown). CPU workers on one
    /// machine share its RAM, so for them all workers' peaks must fit.
    pub fits: Option<bool>,
    /// When it does not fit: the knobs to turn and what each would bring.
    pub advice: Vec<String>,
}

/// What the model asks per parameter and per token, from its shape and `[model]`/`[lora]`.
#[derive(Debug, Clone)]
struct Shape {
    config: Qwen2Config,
    lora: Option<LoraConfig>,
    base_bytes: u64,
    /// Whether the device is a GPU (runtime share, KV dtype).
    gpu: bool,
}

impl Shape {
    fn params(&self) -> u64 {
        self.config.num_parameters() as u64
    }

    /// `(hidden, q width, k/v width, intermediate)` of a decoder layer.
    fn widths(&self) -> (usize, usize, usize, usize) {
        let c = &self.config;
        (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        )
    }

    /// `(in, out)` of a decoder layer's projection.
    fn projection(&self, name: &str) -> (usize, usize) {
        let (h, q, kv, i) = self.widths();
        match name {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, i),
            _ => (i, h),
        }
    }

    /// Adapter parameters: `r (in + out)` per adapted projection and layer.
    fn adapter_params(&self) -> u64 {
        let Some(lora) = &self.lora else { return 0 };
        let per_layer: usize = lora
            .targets()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let (i, o) = self.projection(m);
                lora.r * (i + o)
            })
            .sum();
        (per_layer * self.config.num_hidden_layers) as u64
    }

    fn trainable(&self) -> u64 {
        match self.lora {
            Some(_) => self.adapter_params(),
            None => self.params(),
        }
    }

    /// Values a decoder layer's graph keeps per token: the norms' inputs and outputs, q, k, v and
    /// the attention output (the blockwise attention node), the output projection's input, the
    /// MLP's gate, up and SwiGLU output; with Qwen3's q/k norms also their inputs (the q and k
    /// projections' outputs); plus each adapter's `r` intermediate.
    fn layer_values_per_token(&self) -> u64 {
        let (h, q, kv, i) = self.widths();
        let adapters = self
            .lora
            .as_ref()
            .map_or(0, |l| l.r * l.targets().unwrap_or_default().len());
        let qk_norm = if self.config.qk_norm { q + kv } else { 0 };
        (4 * h + 3 * q + 2 * kv + 3 * i + qk_norm + adapters) as u64
    }

    /// Activations of one micro-batch of `tokens`, plain and checkpointed.
    fn activations(&self, tokens: usize, bf16: bool, logits_chunk: usize) -> (u64, u64) {
        let c = &self.config;
        let dtype = if bf16 { 2.0 } else { 4.0 };
        let t = tokens as f64;
        let layers = c.num_hidden_layers as f64;
        let layer = self.layer_values_per_token() as f64;
        // Embedding output, final norm input and output, the hidden states' gradient.
        let outside = 4.0 * c.hidden_size as f64;
        let rows = logits_chunk.min(tokens).max(1) as u64;
        let head = LM_HEAD_BUFFERS * rows * c.vocab_size as u64 * 4;
        let plain = PLAIN_ACTIVATION_FACTOR * t * dtype * (layers * layer + outside);
        // Each layer keeps its input; the layer being re-run holds its activations and their
        // gradients.
        let kept = layers * c.hidden_size as f64 + 2.0 * layer + outside;
        let checkpointed = CHECKPOINTED_ACTIVATION_FACTOR * t * dtype * kept;
        (plain as u64 + head, checkpointed as u64 + head)
    }

    /// KV cache bytes per cached position (keys and values of every layer).
    fn kv_bytes_per_position(&self) -> u64 {
        let c = &self.config;
        let dtype = if self.lora.is_some() {
            self.base_bytes
        } else {
            4
        };
        (2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim) as u64 * dtype
    }

    fn runtime(&self) -> u64 {
        if self.gpu {
            GPU_RUNTIME_BYTES
        } else {
            CPU_RUNTIME_BYTES
        }
    }

    /// Weights as held for training: f32 master weights, or the frozen base in its dtype plus
    /// f32 adapters; and the bf16 compute copy when bf16 compute casts f32 weights.
    fn weights(&self, bf16: bool) -> (u64, u64) {
        let p = self.params();
        match &self.lora {
            None => (4 * p, if bf16 { 2 * p } else { 0 }),
            Some(_) => {
                let adapters = 4 * self.adapter_params();
                let copy = if bf16 && self.base_bytes == 4 {
                    2 * p
                } else {
                    0
                };
                (self.base_bytes * p + adapters, copy)
            }
        }
    }

    fn phase(&self, name: &str, spec: &PhaseSpec, world: usize) -> PhaseBytes {
        let world = world.max(1);
        let mut b = PhaseBytes {
            name: name.to_string(),
            runtime_bytes: self.runtime(),
            ..Default::default()
        };
        match spec {
            PhaseSpec::Train(t) => {
                let (weights, copy) = self.weights(t.bf16);
                b.weights_bytes = weights;
                b.compute_copy_bytes = copy;
                let share = t.sequences_per_step.div_ceil(world).max(1);
                let tokens = t
                    .micro_batch_tokens
                    .max(t.max_sequence)
                    .min(share * t.max_sequence);
                // The micro-batch's gradients and their accumulated (then clipped) copy.
                b.gradients_bytes = 2 * 4 * self.trainable();
                b.optimizer_bytes = 8 * self.trainable();
                // A bf16 base under LoRA computes in bf16 whatever `bf16` says.
                let low = t.bf16 || (self.lora.is_some() && self.base_bytes == 2);
                let (plain, ckpt) = self.activations(tokens, low, t.logits_chunk);
                b.activations_plain_bytes = plain;
                b.activations_checkpointed_bytes = ckpt;
                b.activations_bytes = if t.gradient_checkpointing {
                    ckpt
                } else {
                    plain
                };
                b.micro_batch_tokens = tokens;
                if t.reference {
                    b.reference_bytes = 4 * self.params();
                }
            }
            PhaseSpec::Generate(g) => {
                b.weights_bytes = self.weights(false).0;
                if g.training_state {
                    b.optimizer_bytes = 8 * self.trainable();
                }
                let prompts = g.prompts_per_call.min(g.prompts.div_ceil(world)).max(1);
                let seqs = prompts * g.samples.max(1);
                b.kv_sequences = seqs;
                let c = &self.config;
                // One layer's working set of a prefill chunk (no graph).
                let chunk = (prompts * g.prefill_chunk.min(g.capacity)) as u64;
                let prefill = chunk * 4 * (self.layer_values_per_token() + c.hidden_size as u64);
                let logits = seqs as u64 * c.vocab_size as u64 * 4 * 2;
                b.kv_cache_bytes =
                    self.kv_bytes_per_position() * (seqs * g.capacity) as u64 + prefill.max(logits);
                if g.reference {
                    b.reference_bytes = 4 * self.params();
                }
            }
        }
        let resident = b.weights_bytes + b.optimizer_bytes + b.reference_bytes + b.runtime_bytes;
        if matches!(spec, PhaseSpec::Train(_)) && !self.gpu {
            // A LoRA checkpoint holds the adapters (f32) and their optimiser state only.
            let saved = match self.lora {
                Some(_) => 4 * self.adapter_params(),
                None => self.weights(false).0,
            };
            let state = saved + b.optimizer_bytes;
            b.checkpoint_save_bytes = (SAVE_BUFFER_FACTOR * state as f64) as u64;
        }
        b.peak_bytes = (resident
            + b.compute_copy_bytes
            + b.gradients_bytes
            + b.activations_bytes
            + b.kv_cache_bytes)
            .max(resident + b.checkpoint_save_bytes);
        b
    }
}

/// Whether a device kind is the host's memory.
fn is_cpu(device: &DeviceSpec) -> bool {
    matches!(device, DeviceSpec::Flex | DeviceSpec::NdArray)
}

/// The machine's total RAM from `/proc/meminfo` (`None` where it cannot be read).
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One device's memory: `--device-memory-gib`, else the host's RAM for CPU devices; a GPU
/// without it is an error (the plan never touches a device).
pub fn device_memory(device: &DeviceSpec, gib: Option<f64>) -> Result<Option<u64>> {
    if let Some(g) = gib {
        if !(g > 0.0 && g.is_finite()) {
            return Err(Error::Invalid(format!(
                "--device-memory-gib {g}: expected a positive number of GiB"
            )));
        }
        return Ok(Some((g * GIB) as u64));
    }
    if is_cpu(device) {
        return Ok(host_memory_bytes());
    }
    Ok(None)
}

/// The `config.json` to plan from: `override_path` (a file or its folder), else `[model] path`'s.
fn model_config_path(model: &ModelSection, override_path: Option<&Path>) -> PathBuf {
    let p = override_path.unwrap_or(&model.path);
    if p.is_dir() || override_path.is_none() {
        p.join("config.json")
    } else {
        p.to_path_buf()
    }
}

impl MemoryPlan {
    /// Plans `workload` on `options.device` (else the config's, else the best compiled-in one).
    pub fn new(workload: &Workload, options: &PlanOptions) -> Result<Self> {
        let device = match (options.device, &workload.device) {
            (Some(d), _) => d,
            (None, Some(s)) => DeviceSpec::parse_any(s)?,
            (None, None) => DeviceSpec::best_available(),
        };
        let config_path = model_config_path(&workload.model, options.model_config.as_deref());
        let config = Qwen2Config::from_file(&config_path).map_err(|e| match e {
            Error::Io { path, source } => Error::Invalid(format!(
                "{}: {source}: plan reads the model's config.json (from [model] path, or give \
                 --model-config FILE)",
                path.display()
            )),
            other => other,
        })?;
        let base_bytes = match workload.model.base_dtype()? {
            Some(d) if workload.model.lora.is_some() => match d {
                BaseDtype::Auto => dtype_bytes(config.torch_dtype.as_deref()),
                other => other.bytes() as u64,
            },
            _ => 4,
        };
        let shape = Shape {
            config,
            lora: workload.model.lora.clone(),
            base_bytes,
            gpu: !is_cpu(&device),
        };
        let world = options.devices.unwrap_or(workload.world).max(1);
        let memory = device_memory(&device, options.device_memory_gib)?;
        let mut plan = Self::from_shape(&shape, workload, world, memory);
        plan.model_config = config_path;
        plan.device = device.to_string();
        if plan.fits == Some(false) {
            plan.advice = advice(&shape, workload, world, memory.unwrap_or(0), &plan);
        }
        Ok(plan)
    }

    fn from_shape(shape: &Shape, workload: &Workload, world: usize, memory: Option<u64>) -> Self {
        let phases: Vec<PhaseBytes> = workload
            .phases
            .iter()
            .map(|(name, spec)| shape.phase(name, spec, world))
            .collect();
        let top = phases
            .iter()
            .max_by_key(|p| p.peak_bytes)
            .cloned()
            .unwrap_or_default();
        // CPU workers of one machine share its RAM.
        let sharing = if shape.gpu { 1 } else { world as u64 };
        Self {
            config_kind: workload.kind.to_string(),
            model_config: PathBuf::new(),
            parameters: shape.params(),
            trainable_parameters: shape.trainable(),
            weight_dtype_bytes: if shape.lora.is_some() {
                shape.base_bytes as usize
            } else {
                4
            },
            device: String::new(),
            devices: world,
            device_memory_bytes: memory,
            peak_bytes: top.peak_bytes,
            peak_phase: top.name.clone(),
            fits: memory.map(|m| top.peak_bytes * sharing <= m),
            phases,
            advice: Vec::new(),
        }
    }

    /// The plan as a table: one column per phase, one row per component.
    pub fn table(&self) -> String {
        let gib = |b: u64| format!("{:.2}", b as f64 / GIB);
        let mut rows: Vec<(String, Vec<String>)> = vec![(
            "GiB per device".into(),
            self.phases.iter().map(|p| p.name.clone()).collect(),
        )];
        type Field = fn(&PhaseBytes) -> u64;
        let fields: [(&str, Field); 12] = [
            ("weights", |p| p.weights_bytes),
            ("bf16 compute copy", |p| p.compute_copy_bytes),
            ("gradients", |p| p.gradients_bytes),
            ("optimiser state", |p| p.optimizer_bytes),
            ("activations", |p| p.activations_bytes),
            ("  plain", |p| p.activations_plain_bytes),
            ("  checkpointed", |p| p.activations_checkpointed_bytes),
            ("KV cache", |p| p.kv_cache_bytes),
            ("reference model", |p| p.reference_bytes),
            ("runtime", |p| p.runtime_bytes),
            ("checkpoint save", |p| p.checkpoint_save_bytes),
            ("peak", |p| p.peak_bytes),
        ];
        for (label, f) in fields {
            rows.push((
                label.into(),
                self.phases.iter().map(|p| gib(f(p))).collect(),
            ));
        }
        rows.push((
            "micro-batch tokens".into(),
            self.phases
                .iter()
                .map(|p| p.micro_batch_tokens.to_string())
                .collect(),
        ));
        rows.push((
            "KV sequences".into(),
            self.phases
                .iter()
                .map(|p| p.kv_sequences.to_string())
                .collect(),
        ));
        let label_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let col_w: Vec<usize> = (0..self.phases.len())
            .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "{} config, {} ({} parameters, {} trainable), {} x {}\n\n",
            self.config_kind,
            self.model_config.display(),
            self.parameters,
            self.trainable_parameters,
            self.devices,
            self.device
        );
        for (label, cells) in &rows {
            out += &format!("{label:<label_w$}");
            for (c, w) in cells.iter().zip(&col_w) {
                out += &format!("  {c:>w$}");
            }
            out += "\n";
        }
        out += &format!(
            "\npeak {:.2} GiB per device ({})",
            self.peak_bytes as f64 / GIB,
            self.peak_phase
        );
        match (self.device_memory_bytes, self.fits) {
            (Some(m), Some(fits)) => {
                out += &format!(
                    " of {:.2} GiB: {}\n",
                    m as f64 / GIB,
                    if fits { "fits" } else { "does NOT fit" }
                )
            }
            _ => out += ": device memory unknown (give --device-memory-gib)\n",
        }
        for a in &self.advice {
            out += &format!("  - {a}\n");
        }
        out
    }

    /// The error `sft`, `rl` and `pipeline` refuse a config with, naming the knobs.
    pub fn refusal(&self) -> Error {
        Error::Invalid(format!(
            "this config needs {:.2} GiB per device ({}, {} worker(s)), more than the {:.2} GiB \
             of {}; turn one of these knobs (`longrl plan --config FILE` shows the breakdown, \
             --no-plan-check runs anyway):\n  - {}",
            self.peak_bytes as f64 / GIB,
            self.peak_phase,
            self.devices,
            self.device_memory_bytes.unwrap_or(0) as f64 / GIB,
            self.device,
            self.advice.join("\n  - ")
        ))
    }
}

/// Bytes per weight of a checkpoint's `torch_dtype` (2 when unknown: published checkpoints are
/// bf16).
fn dtype_bytes(dtype: Option<&str>) -> u64 {
    match dtype {
        Some("float32") => 4,
        _ => 2,
    }
}

/// The knobs that would bring the peak down, each with the peak it would give.
fn advice(
    shape: &Shape,
    workload: &Workload,
    world: usize,
    memory: u64,
    plan: &MemoryPlan,
) -> Vec<String> {
    let sharing = if shape.gpu { 1 } else { world as u64 };
    let outcome = |peak: u64| {
        format!(
            "peak {:.2} GiB ({})",
            peak as f64 / GIB,
            if peak * sharing <= memory {
                "fits"
            } else {
                "still too much"
            }
        )
    };
    let peak_of = |shape: &Shape, w: &Workload, world: usize| {
        MemoryPlan::from_shape(shape, w, world, None).peak_bytes
    };
    let mut out = Vec::new();
    let train_phases = |f: &dyn Fn(&mut TrainSpec)| {
        let mut w = workload.clone();
        for (_, spec) in &mut w.phases {
            if let PhaseSpec::Train(t) = spec {
                f(t);
            }
        }
        w
    };
    let unchecked = workload
        .phases
        .iter()
        .any(|(_, s)| matches!(s, PhaseSpec::Train(t) if !t.gradient_checkpointing));
    if unchecked {
        let w = train_phases(&|t| t.gradient_checkpointing = true);
        out.push(format!(
            "gradient_checkpointing = true ([sft]/[rl]): {}",
            outcome(peak_of(shape, &w, world))
        ));
    }
    if shape.lora.is_none() {
        let mut s = shape.clone();
        s.lora = Some(LoraConfig {
            r: 16,
            target_modules: Some(crate::model::lora::TargetModules::Shorthand(
                "all-linear".into(),
            )),
            ..LoraConfig::default()
        });
        s.base_bytes = 2;
        out.push(format!(
            "[lora] r = 16, target_modules = \"all-linear\" with [model] base_dtype = \
             \"bfloat16\": {}",
            outcome(peak_of(&s, workload, world))
        ));
    }
    let top = workload.phases.iter().find(|(n, _)| *n == plan.peak_phase);
    if let Some((name, spec)) = top {
        let mut w = workload.clone();
        let knob = match spec {
            PhaseSpec::Train(t) => {
                let half = (t.max_sequence / 2).max(1);
                for (_, s) in &mut w.phases {
                    if let PhaseSpec::Train(u) = s {
                        u.max_sequence = u.max_sequence.min(half);
                        u.micro_batch_tokens = u.micro_batch_tokens.min(half);
                    }
                }
                format!(
                    "a shorter longest sequence ({name}: {half} tokens instead of {}: sft.max_length, \
                     a stage's max_input_tokens + max_output_tokens, or micro_batch_tokens)",
                    t.max_sequence
                )
            }
            PhaseSpec::Generate(g) => {
                for (n, s) in &mut w.phases {
                    if let (PhaseSpec::Generate(u), true) = (s, n == name) {
                        u.prompts_per_call = 1;
                    }
                }
                let knob = if name == "eval" {
                    "[eval] batch_size"
                } else {
                    "rl.rollout_batch_size"
                };
                format!(
                    "fewer sequences decoded at once ({name}: {knob} = 1, {} sequences of {} \
                     positions; num_generations and a stage's lengths count too)",
                    g.samples, g.capacity
                )
            }
        };
        out.push(format!("{knob}: {}", outcome(peak_of(shape, &w, world))));
    }
    // CPU workers share one machine's RAM: more of them only add up.
    for n in [2, 4, 8].into_iter().filter(|_| shape.gpu) {
        let more = world * n;
        let peak = peak_of(shape, workload, more);
        if peak < plan.peak_bytes {
            out.push(format!(
                "more devices ({more}, `--devices` / [distributed]): each holds a smaller share \
                 of the batch: {}",
                outcome(peak)
            ));
            break;
        }
    }
    if !out.iter().any(|a| a.ends_with("(fits)")) {
        out.push(
            "no single knob is enough: combine them, or shard the model across devices (not \
             supported yet)"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = env!("CARGO_MANIFEST_DIR");

    fn root(p: &str) -> PathBuf {
        Path::new(ROOT).join(p)
    }

    fn tiny_sft() -> SftFile {
        crate::cli::load_sft_file(&root("configs/tiny-sft.toml"), &Default::default()).unwrap()
    }

    fn plan(w: &Workload, gib: f64) -> MemoryPlan {
        let options = PlanOptions {
            device: Some(DeviceSpec::Cuda(0)),
            device_memory_gib: Some(gib),
            ..Default::default()
        };
        MemoryPlan::new(w, &options).unwrap()
    }

    #[cfg(feature = "flex")]
    #[test]
    fn parameter_counts_match_the_tiny_models() {
        use burn::module::Module;
        for name in ["tiny-qwen2-chatml", "tiny-r1-distill", "tiny-qwen3"] {
            let dir = root("models").join(name);
            let model =
                crate::model::load_model::<burn::backend::Flex>(&dir, &Default::default()).unwrap();
            let mut file = tiny_sft();
            file.model.path = dir;
            let p = plan(&Workload::from_sft(&file), 1.0);
            assert_eq!(p.parameters, model.num_params() as u64, "{name}");
            assert_eq!(p.trainable_parameters, p.parameters);
        }
    }

    #[test]
    fn qwen3_plans_with_its_head_dim_and_q_k_norms() {
        let mut file = tiny_sft();
        file.model.path = root("models/Qwen3-0.6B");
        let full = plan(&Workload::from_sft(&file), 80.0);
        // Published: 596,049,920 (q/k norms counted, tied lm_head).
        assert_eq!(full.parameters, 596_049_920);
        file.model.lora = Some(LoraConfig {
            r: 8,
            ..LoraConfig::default()
        });
        let lora = plan(&Workload::from_sft(&file), 80.0);
        // head_dim 128, not 1024 / 16: q_proj 1024 -> 2048, v_proj 1024 -> 1024, 28 layers.
        assert_eq!(
            lora.trainable_parameters,
            28 * 8 * ((1024 + 2048) + (1024 + 1024))
        );
    }

    #[test]
    fn lora_trains_only_the_adapters() {
        let full = tiny_sft();
        let mut lora = full.clone();
        lora.model.lora = Some(LoraConfig {
            r: 4,
            ..LoraConfig::default()
        });
        let (a, b) = (
            plan(&Workload::from_sft(&full), 1.0),
            plan(&Workload::from_sft(&lora), 1.0),
        );
        // tiny: hidden 64, 4 heads / 2 kv heads of 16, 2 layers; q_proj 64 -> 64, v_proj 64 -> 32.
        let adapters = 2 * 4 * ((64 + 64) + (64 + 32));
        assert_eq!(b.trainable_parameters, adapters);
        let (fa, fb) = (&a.phases[0], &b.phases[0]);
        assert_eq!(fa.optimizer_bytes, 8 * a.parameters);
        assert_eq!(fb.optimizer_bytes, 8 * adapters);
        assert_eq!(fa.gradients_bytes / (4 * a.parameters), 2);
        assert_eq!(fb.gradients_bytes, 2 * 4 * adapters);
        // The f32 base stays, the adapters come on top.
        assert_eq!(fb.weights_bytes, 4 * (a.parameters + adapters));
    }

    #[test]
    fn a_bf16_base_halves_the_weights_and_the_reference_is_not_copied() {
        let mut file: RlFile =
            crate::cli::load_rl_file(&root("configs/tiny-rl.toml"), &Default::default()).unwrap();
        file.rl.loss.beta = 0.1;
        let full = plan(&Workload::from_rl(&file), 1.0);
        assert_eq!(full.phases[1].reference_bytes, 4 * full.parameters);
        file.model.lora = Some(LoraConfig::default());
        file.model.base_dtype = Some("bfloat16".into());
        let lora = plan(&Workload::from_rl(&file), 1.0);
        assert_eq!(lora.phases[1].reference_bytes, 0);
        let adapters = lora.trainable_parameters;
        assert_eq!(
            lora.phases[1].weights_bytes,
            2 * lora.parameters + 4 * adapters
        );
    }

    #[test]
    fn activations_grow_with_tokens_and_checkpointing_shrinks_them() {
        let mut file = tiny_sft();
        // 24 layers: checkpointing keeps one residual per layer instead of all their values.
        file.model.path = root("models/Qwen2.5-0.5B-Instruct");
        file.sft.micro_batch_tokens = 4096;
        file.sft.max_length = 4096;
        let small = plan(&Workload::from_sft(&file), 1.0).phases[0].clone();
        file.sft.micro_batch_tokens = 16384;
        file.sft.max_length = 16384;
        let big = plan(&Workload::from_sft(&file), 1.0).phases[0].clone();
        assert_eq!(big.micro_batch_tokens, 16384);
        assert!(big.activations_plain_bytes > 3 * small.activations_plain_bytes);
        assert!(big.activations_checkpointed_bytes < big.activations_plain_bytes);
    }

    #[test]
    fn a_config_too_big_names_the_knobs() {
        let mut file = tiny_sft();
        file.sft.micro_batch_tokens = 1 << 20;
        file.sft.max_length = 1 << 20;
        let p = plan(&Workload::from_sft(&file), 2.0);
        assert_eq!(p.fits, Some(false));
        let advice = p.advice.join("\n");
        assert!(advice.contains("gradient_checkpointing = true"), "{advice}");
        assert!(advice.contains("[lora]"), "{advice}");
        assert!(advice.contains("sft.max_length"), "{advice}");
        let message = p.refusal().to_string();
        assert!(message.contains("--no-plan-check"), "{message}");
        let roomy = plan(&Workload::from_sft(&file), 1000.0);
        assert_eq!(roomy.fits, Some(true));
        assert!(roomy.advice.is_empty());
    }

    #[test]
    fn a_gpu_without_its_memory_is_planned_but_not_judged() {
        let options = PlanOptions {
            device: Some(DeviceSpec::Cuda(0)),
            ..Default::default()
        };
        let p = MemoryPlan::new(&Workload::from_sft(&tiny_sft()), &options).unwrap();
        assert_eq!(p.fits, None);
        assert!(p.peak_bytes > 0);
        assert!(device_memory(&DeviceSpec::Flex, Some(-1.0)).is_err());
    }

    #[test]
    fn the_lora_recipes_are_planned_as_their_headers_say() {
        // 7B fits one 80 GiB GPU; 14B needs 141 GiB (stage 2); 32B does not fit 141 GiB.
        let b7 = "DeepSeek-R1-Distill-Qwen-7B";
        let b14 = "DeepSeek-R1-Distill-Qwen-14B";
        let b32 = "DeepSeek-R1-Distill-Qwen-32B";
        for (file, model, gib, fits) in [
            ("qwenlong-l1-7b-lora.toml", b7, 80.0, true),
            ("qwenlong-l1-14b-lora.toml", b14, 80.0, false),
            ("qwenlong-l1-14b-lora.toml", b14, 141.0, true),
            ("qwenlong-l1-32b-lora.toml", b32, 141.0, false),
        ] {
            let w = Workload::from_file(&root("configs").join(file)).unwrap();
            let options = PlanOptions {
                device: Some(DeviceSpec::Cuda(0)),
                devices: Some(1),
                device_memory_gib: Some(gib),
                model_config: Some(root("models").join(model)),
            };
            let p = MemoryPlan::new(&w, &options).unwrap();
            assert_eq!(p.fits, Some(fits), "{file} on {gib} GiB:\n{}", p.table());
            assert_eq!(p.advice.is_empty(), fits);
        }
    }
}
