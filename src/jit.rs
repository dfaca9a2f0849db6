//! Persistent cubecl caches and compilation/autotune counters for the JIT backends (`wgpu`,
//! `cuda`).
//!
//! cubecl keeps one process-wide config (`CubeClRuntimeConfig`) that it loads the first time
//! anything asks for it: in practice when the first wgpu or CUDA client is created, i.e. at the
//! first tensor created on a JIT device (or the first autotune / kernel launch). From then on it
//! can no longer change. [`configure_caches`] must therefore run before any tensor touches a
//! `WgpuDevice` or `CudaDevice`.
//!
//! What it switches on, and what persists across processes:
//! - the autotune cache (`[autotune] cache = { file = "<dir>/autotune" }`): the fastest kernel
//!   per autotune key, for wgpu and CUDA alike (files under `<dir>/autotune/autotune/<cubecl
//!   version>/<device>/`). Note that cubecl persists autotune results even without us, under the
//!   nearest `target/` of the current directory (or `~/.cache/cubecl` outside a cargo project);
//!   this only moves them somewhere stable.
//! - the compilation cache (`[compilation] cache = { file = "<dir>/compilation" }`): serves the
//!   CUDA runtime (NVRTC PTX, under `<dir>/compilation/cuda/`) and wgpu only when cubecl-wgpu is
//!   built with its `spirv` feature (burn's `vulkan` feature). longrl's `wgpu` feature uses WGSL,
//!   where cubecl 0.10 has no compilation cache: every WGSL kernel is recompiled in every process.
//! - the compilation logger at level `basic` (one `[Compiling kernel] <name>` line per kernel
//!   compiled) and the autotune logger (one `Fastest result ...` line per autotune run), each
//!   written to a per-process file under `<dir>/logs/`, never to stdout. [`kernels_compiled`] and
//!   [`autotunes_run`] count those lines.
//!
//! Side effects of the compilation logger: on wgpu cubecl then creates its wgpu instance with
//! `InstanceFlags::debugging()` (debug info in shaders, and the Vulkan validation layer when one
//! is installed, which is slow); on CUDA it pipes each kernel source through `clang-format` when
//! that program is installed. With the CUDA PTX cache a cached kernel is not compiled, so it is
//! not counted either.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Line prefixes the compilation logger writes once per kernel compiled: `basic` level, then
/// `full` level (kept when a user's cubecl.toml or `CUBECL_DEBUG_LOG` asked for it).
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
const COMPILATION_MARKERS: &[&str] = &["[Compiling kernel]", "[START_KERNEL_COMPILATION]"];

/// Line prefix the autotune logger writes once per autotune run (levels `minimal` and `full`).
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
const AUTOTUNE_MARKERS: &[&str] = &["Fastest result "];

/// The autotune levels [`configure_caches`] accepts, in cubecl's spelling.
const AUTOTUNE_LEVELS: &[&str] = &["minimal", "balanced", "extensive", "full"];

/// cubecl's autotune effort, parsed from the user's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
enum AutotuneLevel {
    Minimal,
    Balanced,
    Extensive,
    Full,
}

/// Parses an autotune level (`minimal`, `balanced`, `extensive`, `full`; case-insensitive).
fn parse_autotune_level(value: &str) -> Result<AutotuneLevel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "minimal" => Ok(AutotuneLevel::Minimal),
        "balanced" => Ok(AutotuneLevel::Balanced),
        "extensive" => Ok(AutotuneLevel::Extensive),
        "full" => Ok(AutotuneLevel::Full),
        _ => Err(Error::Invalid(format!(
            "autotune level `{value}`: expected one of {}",
            AUTOTUNE_LEVELS.join(", ")
        ))),
    }
}

/// The default folder for longrl's cubecl caches: `$LONGRL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/longrl/cubecl`, else `~/.cache/longrl/cubecl` (empty variables count as
/// unset), so that autotune results and compiled kernels outlive one run.
pub fn default_cache_dir() -> PathBuf {
    #[allow(deprecated)] // Fixed (and no longer deprecated) since Rust 1.86.
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir);
    cache_dir_from(
        std::env::var_os("LONGRL_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        home,
    )
}

/// [`default_cache_dir`] from explicit values of `$LONGRL_CACHE_DIR`, `$XDG_CACHE_HOME` and the
/// home folder (testable without touching the process environment).
fn cache_dir_from(
    longrl: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<PathBuf>,
) -> PathBuf {
    if let Some(dir) = longrl.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = xdg.map(PathBuf::from).filter(|d| d.is_absolute()) {
        return dir.join("longrl").join("cubecl");
    }
    match home {
        Some(home) => home.join(".cache").join("longrl").join("cubecl"),
        None => std::env::temp_dir().join("longrl").join("cubecl"),
    }
}

/// Switches on cubecl's persistent autotune and compilation caches under `cache_dir`, sets the
/// autotune level when given (`minimal`, `balanced`, `extensive` or `full`), and logs
/// compilations and autotune runs to per-process files so that [`kernels_compiled`] and
/// [`autotunes_run`] can count them.
///
/// Call it before the first tensor on a wgpu or CUDA device: it installs cubecl's process-wide
/// config, which cubecl reads once, when it creates its first client. Settings from a
/// `cubecl.toml` / `burn.toml` `[cubecl]` section and the `CUBECL_*` environment variables are
/// kept, except the cache locations, the autotune level (when given) and the compilation and
/// autotune loggers, which never write to stdout here.
///
/// Calling it again with the same folder and level does nothing and returns `Ok`; with other
/// values it returns an error, as it does when cubecl's config was already loaded (a JIT client
/// exists): no panic, and nothing changes. Builds without `wgpu` and `cuda` only check the
/// level and return `Ok`.
pub fn configure_caches(cache_dir: &Path, autotune_level: Option<&str>) -> Result<()> {
    let level = autotune_level.map(parse_autotune_level).transpose()?;
    imp::configure(cache_dir, level)
}

/// How many kernels cubecl compiled in this process since [`configure_caches`] (kernels served
/// by the CUDA PTX cache are not compiled and not counted); `None` when it was not called or the
/// build has no JIT backend. cubecl logs from a background thread, so the count can lag a
/// launch by a few milliseconds.
pub fn kernels_compiled() -> Option<u64> {
    imp::count(Counter::Compilation)
}

/// How many autotune runs (benchmarks of the candidate kernels for one new key) cubecl did in
/// this process since [`configure_caches`]; keys found in the persistent autotune cache are not
/// re-run and not counted. `None` when counting is off, as for [`kernels_compiled`].
pub fn autotunes_run() -> Option<u64> {
    imp::count(Counter::Autotune)
}

/// Which of the two logs to count.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
enum Counter {
    Compilation,
    Autotune,
}

/// Counts, incrementally, the lines of a log file that start with one of `markers`, from the
/// end the file had when the counter was opened.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
struct LineCounter {
    file: File,
    partial: Vec<u8>,
    count: u64,
    markers: &'static [&'static str],
}

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
impl LineCounter {
    /// Opens `path` for reading, positioned at its current end (earlier lines do not count).
    fn open_at_end(path: &Path, markers: &'static [&'static str]) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            partial: Vec::new(),
            count: 0,
            markers,
        })
    }

    /// Reads what was appended since the last call and returns the running count. A file that
    /// shrank (truncated by someone) is read again from its start; read errors keep the count.
    fn poll(&mut self) -> u64 {
        let position = self.file.stream_position().unwrap_or(0);
        let length = self.file.metadata().map(|m| m.len()).unwrap_or(position);
        if length < position && self.file.seek(SeekFrom::Start(0)).is_ok() {
            self.partial.clear();
        }
        let mut bytes = Vec::new();
        if self.file.read_to_end(&mut bytes).is_ok() {
            self.feed(&bytes);
        }
        self.count
    }

    /// Counts the complete lines in `partial` + `bytes` and keeps the unfinished tail.
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let markers = self.markers;
        let counted = self.partial[..last_newline]
            .split(|&b| b == b'\n')
            .filter(|line| markers.iter().any(|m| line.starts_with(m.as_bytes())))
            .count();
        self.count += counted as u64;
        self.partial.drain(..=last_newline);
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod imp {
    //! The cubecl side: builds and installs `CubeClRuntimeConfig`, keeps the log counters.

    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::{Duration, SystemTime};

    use burn::cubecl::config::autotune::{AutotuneLevel as CubeAutotuneLevel, AutotuneLogLevel};
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::compilation::CompilationLogLevel;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    use super::{AutotuneLevel, Counter, LineCounter, AUTOTUNE_MARKERS, COMPILATION_MARKERS};
    use crate::error::{Error, Result};

    /// Per-process log files older than this are deleted when a process configures the caches.
    const LOG_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    /// What [`configure`] installed, and the counters reading its logs.
    struct State {
        cache_dir: PathBuf,
        level: Option<AutotuneLevel>,
        compilation: LineCounter,
        autotune: LineCounter,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    fn state() -> MutexGuard<'static, Option<State>> {
        STATE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The folders and log files under the cache folder.
    struct Layout {
        cache_dir: PathBuf,
        autotune: PathBuf,
        compilation: PathBuf,
        logs: PathBuf,
    }

    impl Layout {
        fn create(cache_dir: &Path) -> Result<Self> {
            std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let cache_dir =
                std::fs::canonicalize(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let layout = Self {
                autotune: cache_dir.join("autotune"),
                compilation: cache_dir.join("compilation"),
                logs: cache_dir.join("logs"),
                cache_dir,
            };
            for dir in [&layout.autotune, &layout.compilation, &layout.logs] {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Ok(layout)
        }

        /// This process's log file for `kind` (`compilation` or `autotune`).
        fn log_file(&self, kind: &str) -> PathBuf {
            self.logs.join(format!("{kind}-{}.log", std::process::id()))
        }
    }

    pub(super) fn configure(cache_dir: &Path, level: Option<AutotuneLevel>) -> Result<()> {
        let mut state = state();
        if let Some(current) = state.as_ref() {
            let same_dir = std::fs::canonicalize(cache_dir)
                .map(|dir| dir == current.cache_dir)
                .unwrap_or(false);
            return if same_dir && level == current.level {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "cubecl caches already configured in this process (cache dir {}, autotune \
                     level {:?}); cannot switch to cache dir {} with autotune level {level:?}",
                    current.cache_dir.display(),
                    current.level,
                    cache_dir.display()
                )))
            };
        }
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return Err(already_loaded(cache_dir));
        }
        let layout = Layout::create(cache_dir)?;
        prune_old_logs(&layout.logs);
        let config = build_config(&layout, level);
        let compilation = open_log(
            config.compilation.logger.file.as_deref(),
            COMPILATION_MARKERS,
        )?;
        let autotune = open_log(config.autotune.logger.file.as_deref(), AUTOTUNE_MARKERS)?;
        {
            // Check and set under one lock: cubecl's own `set` would panic if it was loaded.
            let mut slot = CubeClRuntimeConfig::storage().lock();
            if slot.is_some() {
                return Err(already_loaded(cache_dir));
            }
            *slot = Some(Arc::new(config));
        }
        *state = Some(State {
            cache_dir: layout.cache_dir,
            level,
            compilation,
            autotune,
        });
        Ok(())
    }

    pub(super) fn count(counter: Counter) -> Option<u64> {
        let mut state = state();
        let state = state.as_mut()?;
        Some(match counter {
            Counter::Compilation => state.compilation.poll(),
            Counter::Autotune => state.autotune.poll(),
        })
    }

    fn already_loaded(cache_dir: &Path) -> Error {
        Error::Invalid(format!(
            "cannot put cubecl caches in {}: cubecl's global config is already loaded (a wgpu or \
             CUDA client exists); configure the caches before the first tensor on a JIT device",
            cache_dir.display()
        ))
    }

    /// cubecl's config as cubecl would load it (config files, `CUBECL_*` variables), with our
    /// caches, autotune level and file loggers.
    fn build_config(layout: &Layout, level: Option<AutotuneLevel>) -> CubeClRuntimeConfig {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.autotune.cache = CacheConfig::File(layout.autotune.clone());
        config.compilation.cache = Some(CacheConfig::File(layout.compilation.clone()));
        if let Some(level) = level {
            config.autotune.level = match level {
                AutotuneLevel::Minimal => CubeAutotuneLevel::Minimal,
                AutotuneLevel::Balanced => CubeAutotuneLevel::Balanced,
                AutotuneLevel::Extensive => CubeAutotuneLevel::Extensive,
                AutotuneLevel::Full => CubeAutotuneLevel::Full,
            };
        }

        let logger = &mut config.compilation.logger;
        if matches!(logger.level, CompilationLogLevel::Disabled) {
            logger.level = CompilationLogLevel::Basic;
        }
        // Every cubecl `Logger` opens its own handle on the file: truncating would lose lines.
        logger.append = true;
        logger.stdout = false;
        logger
            .file
            .get_or_insert_with(|| layout.log_file("compilation"));

        let logger = &mut config.autotune.logger;
        if matches!(logger.level, AutotuneLogLevel::Disabled) {
            logger.level = AutotuneLogLevel::Minimal;
        }
        logger.append = true;
        logger.stdout = false;
        logger
            .file
            .get_or_insert_with(|| layout.log_file("autotune"));
        config
    }

    /// Creates the log file if needed (ours start empty) and opens a counter at its end.
    fn open_log(path: Option<&Path>, markers: &'static [&'static str]) -> Result<LineCounter> {
        let path = path.expect("build_config sets every counted logger's file");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        LineCounter::open_at_end(path, markers)
    }

    /// Deletes per-process log files not written for [`LOG_MAX_AGE`] (best effort).
    fn prune_old_logs(logs: &Path) {
        let Ok(entries) = std::fs::read_dir(logs) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = (name.starts_with("compilation-") || name.starts_with("autotune-"))
                && name.ends_with(".log");
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > LOG_MAX_AGE);
            if ours && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod imp {
    //! Builds without a JIT backend: nothing to configure or count.

    use std::path::Path;

    use super::{AutotuneLevel, Counter};
    use crate::error::Result;

    pub(super) fn configure(_cache_dir: &Path, _level: Option<AutotuneLevel>) -> Result<()> {
        Ok(())
    }

    pub(super) fn count(_counter: Counter) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn autotune_levels_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_autotune_level("minimal").unwrap(),
            AutotuneLevel::Minimal
        );
        assert_eq!(
            parse_autotune_level("Balanced").unwrap(),
            AutotuneLevel::Balanced
        );
        assert_eq!(
            parse_autotune_level("extensive").unwrap(),
            AutotuneLevel::Extensive
        );
        assert_eq!(parse_autotune_level(" full ").unwrap(), AutotuneLevel::Full);
        let err = parse_autotune_level("fastest").unwrap_err().to_string();
        assert!(err.contains("autotune level `fastest`"), "{err}");
        assert!(err.contains("minimal, balanced, extensive, full"), "{err}");
    }

    #[test]
    fn bad_level_fails_before_touching_cubecl() {
        let dir = tempfile::tempdir().unwrap();
        let err = configure_caches(dir.path(), Some("max")).unwrap_err();
        assert!(
            matches!(err, Error::Invalid(ref m) if m.contains("`max`")),
            "{err}"
        );
        // Nothing was created: the level is checked first.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn cache_dir_precedence() {
        let home = Some(PathBuf::from("/home/u"));
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            cache_dir_from(some("/c"), some("/x"), home.clone()),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(some(""), some("/x"), home.clone()),
            PathBuf::from("/x/longrl/cubecl")
        );
        assert_eq!(
            cache_dir_from(None, some("relative"), home.clone()),
            PathBuf::from("/home/u/.cache/longrl/cubecl")
        );
        assert_eq!(
            cache_dir_from(None, None, home),
            PathBuf::from("/home/u/.cache/longrl/cubecl")
        );
        assert!(cache_dir_from(None, None, None).ends_with("longrl/cubecl"));
    }

    #[test]
    fn line_counter_counts_marker_lines_only_and_waits_for_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = std::fs::File::create(&path).unwrap();
        writeln!(log, "[Compiling kernel] before").unwrap();
        let mut counter = LineCounter::open_at_end(&path, COMPILATION_MARKERS).unwrap();
        assert_eq!(counter.poll(), 0, "lines before opening do not count");
        write!(
            log,
            "[Compiling kernel] matmul\nExecuting x\n[START_KERNEL_COMPILATION]\nsrc\n[Comp"
        )
        .unwrap();
        assert_eq!(counter.poll(), 2);
        writeln!(log, "iling kernel] add").unwrap();
        assert_eq!(counter.poll(), 3, "a line split across writes counts once");
        let mut autotune = LineCounter::open_at_end(&path, AUTOTUNE_MARKERS).unwrap();
        write!(log, "Fastest result a-key. \n Top 3 times: []\n").unwrap();
        assert_eq!(autotune.poll(), 1);
        assert_eq!(counter.poll(), 3);
    }

    /// Configures the caches (once per process: no other test may) and checks that a tiny wgpu
    /// matmul is counted. Skips when another test of this process created a JIT client first.
    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_compilations_are_counted() {
        use burn::tensor::Tensor;
        use std::time::{Duration, Instant};

        // Kept: cubecl writes there for the rest of the process.
        let dir = tempfile::Builder::new()
            .prefix("longrl-jit-test")
            .tempdir()
            .unwrap()
            .keep();
        if let Err(err) = configure_caches(&dir, None) {
            eprintln!("skipping: {err}");
            return;
        }
        configure_caches(&dir, None).expect("same settings again is a no-op");
        let err = configure_caches(&dir, Some("full")).unwrap_err();
        assert!(err.to_string().contains("already configured"), "{err}");
        assert_eq!(kernels_compiled(), Some(0));

        let device = burn::backend::wgpu::WgpuDevice::default();
        let a = Tensor::<burn::backend::Wgpu, 2>::ones([4, 4], &device);
        let product = a.clone().matmul(a).into_data().to_vec::<f32>().unwrap();
        assert_eq!(product, vec![4.0; 16]);

        // cubecl logs from a background thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut compiled = kernels_compiled().unwrap();
        while compiled == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            compiled = kernels_compiled().unwrap();
        }
        assert!(
            compiled > 0,
            "no compilation logged under {}",
            dir.display()
        );
        assert!(autotunes_run().is_some());
        let err = configure_caches(&dir.join("other"), None).unwrap_err();
        assert!(err.to_string().contains("already configured"), "{err}");
    }
}
