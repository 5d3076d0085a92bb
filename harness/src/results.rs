//! The conformance results file and the table people read.
//!
//! Schema `fusegate-conformance-v1` (results/conformance-<backend>.json), written and read through
//! [`ConformanceRun`]:
//! - `schema`, `backend` (what ran), `environment` (fingerprint of the machine and build),
//!   `golden` (the manifest's provenance: torch, transformers, CUDA, cuBLAS, GPU),
//! - `summary`: {passed, failed, ignored, shared, seconds} (`shared`: trials that passed by
//!   repeating an earlier variant's computation on this backend, counted apart from `passed`),
//! - `trials`: one object per trial: `name` (backend/entry/case), `backend`, `entry`, `mutant_of`,
//!   `check` ("golden" with `case`; "boundary" with `shape`: fresh inputs at a T where a GPU backend
//!   changes kernel or tile, judged against the CPU emulation of HF's numerics; or
//!   "invariance"), `outcome` ("passed" | "failed" | "ignored") with `reason`, `verdict` (the contract's: "pass" or "fail" with `reasons`), `stages` (per
//!   stage: ULP histogram, bit-exact count, max ulp, mean signed ulp, max abs/rel error, relative L2
//!   error of candidate and golden against both fp64 truths, error ratios, the bound applied),
//!   `invariance` (determinism, batch invariance, what differed), `agreement_with_cpu` (GPU
//!   backends: per stage bit-exact fraction and max ulp against the CPU emulation), `seconds`,
//!   `same_computation_as` (where the backend computes this entry exactly as an earlier variant).

use crate::trials::{Check, Outcome, TrialReport};
use fusegate_golden::Provenance;
use fusegate_kernels::{BackendId, EntryId, Stage, Truth};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

pub const SCHEMA: &str = "fusegate-conformance-v1";

/// A results format's name, as its files' `schema` field spells it.
pub trait SchemaName {
    const NAME: &'static str;
}

/// A results file's schema tag: written as `S::NAME`; reading a file with another tag fails,
/// naming both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchemaTag<S>(std::marker::PhantomData<S>);

impl<S: SchemaName> Serialize for SchemaTag<S> {
    fn serialize<Se: Serializer>(&self, s: Se) -> Result<Se::Ok, Se::Error> {
        s.serialize_str(S::NAME)
    }
}

impl<'de, S: SchemaName> Deserialize<'de> for SchemaTag<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tag = String::deserialize(d)?;
        if tag == S::NAME {
            Ok(SchemaTag(std::marker::PhantomData))
        } else {
            Err(serde::de::Error::custom(format!("schema {tag:?}, expected {:?}", S::NAME)))
        }
    }
}

/// The conformance format (`fusegate-conformance-v1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conformance;

impl SchemaName for Conformance {
    const NAME: &'static str = SCHEMA;
}

pub type ConformanceSchema = SchemaTag<Conformance>;

/// Where and with what a run happened: results without it cannot be compared.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Environment {
    pub host: String,
    pub os: String,
    pub arch: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub fusegate_version: String,
    pub git_commit: String,
    pub utc: String,
    /// GPU facts, filled by the CUDA backend when it ran.
    pub device: Option<String>,
}

impl Environment {
    pub fn capture(device: Option<String>) -> Environment {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown".into());
        Environment {
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            fusegate_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: git_commit(),
            utc: utc_now(),
            device,
        }
    }
}

/// The commit a binary was built from, installed once by its `main` (xtask records it at build
/// time). Results then name the code that produced them, wherever the binary runs.
static BUILD_COMMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Installs the build's commit (first call wins).
pub fn set_build_commit(commit: &str) {
    let _ = BUILD_COMMIT.set(commit.to_string());
}

/// The build's commit when a binary installed it; else (library tests, built from this checkout)
/// the checkout's commit, with "-dirty" for local changes.
fn git_commit() -> String {
    if let Some(c) = BUILD_COMMIT.get() {
        return c.clone();
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}

/// UTC time as RFC 3339, without a date crate.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Trials that passed, each a computation of its own.
    pub passed: usize,
    pub failed: usize,
    pub ignored: usize,
    /// Trials that passed by repeating an earlier variant's computation bit for bit (on the CPU,
    /// mixed and exact are standard's emulation): not passes of their own.
    #[serde(default)]
    pub shared: usize,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConformanceRun {
    pub schema: ConformanceSchema,
    pub backend: BackendId,
    pub environment: Environment,
    pub golden: Provenance,
    pub summary: Summary,
    /// Golden cases that could not be loaded, one line each (their trials failed).
    pub errors: Vec<String>,
    /// What the backends recorded (e.g. NVRTC compile times).
    pub backend_notes: Vec<String>,
    pub trials: Vec<TrialReport>,
}

impl ConformanceRun {
    pub fn new(
        backend: BackendId,
        environment: Environment,
        golden: Provenance,
        errors: Vec<String>,
        trials: Vec<TrialReport>,
        seconds: f64,
    ) -> Self {
        let mut summary = Summary { seconds, ..Summary::default() };
        for t in &trials {
            match t.outcome {
                Outcome::Passed if t.same_computation_as.is_some() => summary.shared += 1,
                Outcome::Passed => summary.passed += 1,
                Outcome::Failed(_) => summary.failed += 1,
                Outcome::Ignored(_) => summary.ignored += 1,
            }
        }
        ConformanceRun {
            schema: ConformanceSchema::default(),
            backend,
            environment,
            golden,
            summary,
            errors,
            backend_notes: Vec::new(),
            trials,
        }
    }

    /// Nothing failed and something was checked.
    pub fn ok(&self) -> bool {
        self.summary.failed == 0 && !self.checked_nothing()
    }

    /// Every trial ended without a check (all ignored: no GPU, no implementation), or none ran.
    pub fn checked_nothing(&self) -> bool {
        let s = &self.summary;
        s.passed + s.failed + s.shared == 0
    }

    /// One line per backend where variants share an earlier variant's computation, e.g. "mixed
    /// and exact share standard's emulation on the cpu: ...".
    pub fn shared_notes(&self) -> Vec<String> {
        let mut groups: Vec<(BackendId, EntryId, Vec<EntryId>)> = Vec::new();
        for t in &self.trials {
            let Some(of) = t.same_computation_as else { continue };
            match groups.iter_mut().find(|g| g.0 == t.backend && g.1 == of) {
                Some(g) if !g.2.contains(&t.entry) => g.2.push(t.entry),
                Some(_) => {}
                None => groups.push((t.backend, of, vec![t.entry])),
            }
        }
        groups
            .into_iter()
            .map(|(backend, of, entries)| {
                let names: Vec<&str> = entries.iter().map(|e| e.name()).collect();
                let (names, share, their) = match names.as_slice() {
                    [one] => (one.to_string(), "shares", "its"),
                    [rest @ .., last] => (format!("{} and {last}", rest.join(", ")), "share", "their"),
                    [] => unreachable!("a group has the entry that made it"),
                };
                let how = if backend == BackendId::Cpu { "emulation" } else { "computation" };
                format!(
                    "{names} {share} {of}'s {how} on the {backend}: {their} rows are one computation, counted once \
                     (as {of}'s; \"shared\" rows are judged by their own contract)"
                )
            })
            .collect()
    }

    /// Reads a conformance file written by any version of this schema; the error is one line
    /// naming the file.
    pub fn load(path: &Path) -> Result<ConformanceRun, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a conformance results file: {e}", path.display()))
    }

    /// One line per trial, grouped by entry, then a line per entry with its pass count.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:<24} {:<28} {:<9} {:>10} {:>7} {:>8}  note",
            "backend", "entry", "case", "verdict", "C exact %", "C ulp", "C ratio"
        );
        for t in &self.trials {
            let case = match &t.check {
                Check::Golden { case } => case.clone(),
                Check::Boundary { shape } => format!("(fresh, H={} T={})", shape.h, shape.t),
                Check::Invariance => "(invariance)".into(),
            };
            let verdict = match (&t.outcome, t.mutant_of.is_some()) {
                (Outcome::Passed, false) if t.same_computation_as.is_some() => "shared",
                (Outcome::Passed, false) => "PASS",
                (Outcome::Passed, true) => "REJECTED",
                (Outcome::Failed(_), false) => "FAIL",
                (Outcome::Failed(_), true) => "ACCEPTED!",
                (Outcome::Ignored(_), _) => "ignored",
            };
            let (exact, ulp, ratio) = match t.stage_c() {
                Some((e, u, r)) => (format!("{:.3}", 100.0 * e), u.to_string(), format!("{r:.3}")),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let note = note(t);
            let _ = writeln!(
                s,
                "{:<8} {:<24} {:<28} {:<9} {:>10} {:>7} {:>8}  {note}",
                t.backend, t.entry, case, verdict, exact, ulp, ratio
            );
        }
        s.push_str(&self.entry_summary());
        for n in self.shared_notes() {
            let _ = writeln!(s, "\n{n}");
        }
        let sum = &self.summary;
        let shared = if sum.shared > 0 { format!(", {} shared", sum.shared) } else { String::new() };
        let _ = writeln!(
            s,
            "\n{} passed, {} failed, {} ignored{shared} in {:.1} s",
            sum.passed, sum.failed, sum.ignored, sum.seconds
        );
        s
    }
}

impl ConformanceRun {
    /// Per entry over its golden trials: how close to HF bitwise, how accurate against fp64 truth.
    pub fn entry_summary(&self) -> String {
        let mut s = String::from("\nper entry, over its golden cases (q, k, v together):\n");
        let mut seen: Vec<(BackendId, EntryId)> = Vec::new();
        for t in &self.trials {
            if !seen.contains(&(t.backend, t.entry)) {
                seen.push((t.backend, t.entry));
            }
        }
        for (backend, entry) in seen {
            let golden: Vec<&TrialReport> = self
                .trials
                .iter()
                .filter(|t| t.backend == backend && t.entry == entry && matches!(t.check, Check::Golden { .. }))
                .collect();
            let c: Vec<(f64, u64, f64)> = golden.iter().filter_map(|t| t.stage_c()).collect();
            if c.is_empty() {
                continue;
            }
            let passed = golden.iter().filter(|t| t.outcome == Outcome::Passed).count();
            let shared = golden.iter().find_map(|t| t.same_computation_as);
            let (lo, hi) = c.iter().fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(x.0), h.max(x.0)));
            let max_ulp = c.iter().map(|x| x.1).max().unwrap_or(0);
            let (rlo, rhi) = c.iter().fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(x.2), h.max(x.2)));
            let truth = golden
                .iter()
                .flat_map(|t| &t.stages)
                .find_map(|st| st.bound.filter(|b| b.max_error_ratio.is_some() && Stage::C.contains(&st.stage)))
                .map_or("golden-operand", |b| match b.truth {
                    Truth::IdealMath => "exact-op",
                    Truth::GoldenOperands => "golden-operand",
                });
            let verb = match shared {
                _ if t_is_mutant(&golden) => "rejected".to_string(),
                Some(of) => format!("{of}'s computation, within its own contract on"),
                None => "passed".to_string(),
            };
            let agreement: Vec<_> =
                golden.iter().flat_map(|t| &t.agreement_with_cpu).filter(|a| Stage::C.contains(&a.stage)).collect();
            let vs_cpu = if agreement.is_empty() {
                String::new()
            } else {
                let lo = agreement.iter().map(|a| a.bit_exact_fraction).fold(1.0, f64::min);
                let ulp = agreement.iter().map(|a| a.max_ulp).max().unwrap_or(0);
                format!("; vs its CPU emulation: >= {:.2}% bit-identical, max {ulp} ulp", 100.0 * lo)
            };
            // A mutant's weakest rejection, a variant's least headroom, over its golden cases.
            let margins = golden.iter().filter_map(|t| t.margin);
            let margin = if t_is_mutant(&golden) {
                margins.reduce(f64::min).map_or(String::new(), |m| format!("; rejected by >= {m:.2}x its bound"))
            } else {
                margins.reduce(f64::max).map_or(String::new(), |m| format!("; worst figure at {m:.2}x its bound"))
            };
            let _ = writeln!(
                s,
                "  {backend}/{entry}: {verb} {passed}/{}; bit-identical to PyTorch on {:.2}-{:.2}% of outputs, \
                 max {max_ulp} ulp; error to the {truth} fp64 truth {rlo:.3}-{rhi:.3}x PyTorch's{vs_cpu}{margin}",
                golden.len(),
                100.0 * lo,
                100.0 * hi,
            );
        }
        s
    }
}

fn t_is_mutant(trials: &[&TrialReport]) -> bool {
    trials.first().is_some_and(|t| t.mutant_of.is_some())
}

/// The one thing worth reading about a trial, on its line.
fn note(t: &TrialReport) -> String {
    match (&t.outcome, t.same_computation_as) {
        (Outcome::Passed, Some(of)) => match own_note(t) {
            n if n.is_empty() => format!("= {of}'s computation"),
            n => format!("= {of}'s computation; {n}"),
        },
        _ => own_note(t),
    }
}

fn own_note(t: &TrialReport) -> String {
    match (&t.outcome, &t.invariance) {
        (Outcome::Failed(r) | Outcome::Ignored(r), _) => first_line(r),
        (Outcome::Passed, Some(inv)) => {
            let mut line = format!(
                "deterministic: {}, batch-invariant: {} (T in {:?})",
                yes(inv.deterministic),
                yes(inv.batch_invariant),
                inv.token_counts
            );
            if !inv.chained.is_empty() {
                let ts: Vec<usize> = inv.chained.iter().map(|c| c.t).collect();
                line += &format!(", chained launches wait: {} (T in {ts:?})", yes(inv.chains_safely()));
            }
            line
        }
        (Outcome::Passed, None) => match &t.verdict {
            Some(crate::verdict::Verdict::Fail { reasons }) => {
                format!("rejected: {}", first_line(&reasons[0]))
            }
            _ => String::new(),
        },
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn first_line(s: &str) -> String {
    const MAX: usize = 110;
    let s = s.lines().next().unwrap_or("");
    if s.len() > MAX { format!("{}...", &s[..s.floor_char_boundary(MAX)]) } else { s.to_string() }
}

/// Before a run: whether results can later be written at `path`. A symbolic link or a folder at
/// the path is refused (the atomic rename would replace the link, not write through it), and the
/// folder is created now, so that a path under a regular file or where nothing can be created
/// fails before the run instead of after it.
pub fn prepare_output(path: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_symlink() {
            let why = "is a symbolic link: results replace files, not links (pass the link's target)";
            return Err(Error::new(ErrorKind::InvalidInput, why));
        }
        if m.is_dir() {
            return Err(Error::new(ErrorKind::InvalidInput, "is a folder, not a file path"));
        }
    }
    create_parent(path).map(|_| ())
}

/// The folder `path` goes in, created if missing; a parent that is a regular file is refused,
/// naming it.
fn create_parent(path: &Path) -> std::io::Result<&Path> {
    use std::io::{Error, ErrorKind};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if dir.exists() && !dir.is_dir() {
        return Err(Error::new(ErrorKind::NotADirectory, format!("{} is not a directory", dir.display())));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::new(e.kind(), format!("cannot create directory {}: {e}", dir.display())))?;
    Ok(dir)
}

/// JSON with one line per top-level field and one line per element of a top-level array (a
/// trial, a row): about half the bytes of indented JSON, and still a diff per trial. Any JSON
/// reader reads it back.
pub fn to_json_lines<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let value = serde_json::to_value(value)?;
    let serde_json::Value::Object(fields) = value else {
        return serde_json::to_vec(&value);
    };
    let mut out = b"{".to_vec();
    for (i, (key, v)) in fields.iter().enumerate() {
        out.extend_from_slice(if i == 0 { b"\n " } else { b",\n " });
        out.extend(serde_json::to_vec(key)?);
        out.extend_from_slice(b": ");
        match v {
            serde_json::Value::Array(items) if !items.is_empty() => {
                out.push(b'[');
                for (j, item) in items.iter().enumerate() {
                    out.extend_from_slice(if j == 0 { b"\n  " } else { b",\n  " });
                    out.extend(serde_json::to_vec(item)?);
                }
                out.extend_from_slice(b"\n ]");
            }
            _ => out.extend(serde_json::to_vec(v)?),
        }
    }
    out.extend_from_slice(b"\n}\n");
    Ok(out)
}

/// Writes `bytes` to `path` through a temp file in the same directory (tempfile's
/// `NamedTempFile`, synced, then persisted by a rename), so a reader never sees half a file and a
/// failed write loses nothing already there.
///
/// Each call gets its own temp file (`.<name>.<random>.tmp`, created exclusively), so concurrent
/// writers to one path never share one; each rename replaces the file whole, so the last one wins
/// and no reader ever sees a mix. The temp file is deleted when the write or the rename fails, and
/// when the process unwinds before the rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    let Some(name) = path.file_name() else {
        return Err(Error::new(ErrorKind::InvalidInput, "not a file path"));
    };
    let dir = create_parent(path)?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // A results file is as readable as any file the user creates (tempfile's default is 0600).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut file = builder
        .tempfile_in(dir)
        .map_err(|e| Error::new(e.kind(), format!("cannot create a temp file in {}: {e}", dir.display())))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map(|_| ()).map_err(|e| e.error)
}

#[cfg(test)]
mod json_lines_tests {
    #[test]
    fn json_lines_read_back_to_the_same_value_with_a_line_per_array_element() {
        let v = serde_json::json!({"schema": "s", "n": {"a": [1, 2]}, "trials": [{"x": 1.5}, {"x": [3, 4]}], "e": []});
        let bytes = super::to_json_lines(&v).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(), v);
        assert!(text.lines().any(|l| l == r#"  {"x":[3,4]}"#), "{text}");
        assert_eq!(text.lines().count(), 9, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_file_written_before_shared_trials_were_recorded_still_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results/conformance-cpu.json");
        let run = ConformanceRun::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!run.trials.is_empty());
        // Whatever it recorded, every trial it counted as passed or shared is one of its trials.
        let s = &run.summary;
        assert_eq!(s.passed + s.failed + s.ignored + s.shared, run.trials.len(), "{s:?}");
    }

    /// tempfile creates its files 0600; a results file is as readable as any other the user makes.
    #[cfg(unix)]
    #[test]
    fn a_results_file_gets_the_usual_permissions_and_no_temp_file_stays() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/results.json");
        write_atomically(&path, b"{}").unwrap();
        write_atomically(&path, b"[]").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[]");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let usual = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, usual, "results file mode {mode:o}, a plain file's {usual:o}");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["results.json"]);
    }
}
