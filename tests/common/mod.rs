//! The one harness for CLI integration tests: a temp dir plus a builder for `rdrop` invocations.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory that lives as long as the test.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` inside the sandbox and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&p, contents).expect("write sandbox file");
        p
    }

    /// A `rdrop` invocation that runs inside the sandbox.
    pub fn rdrop(&self) -> Rdrop {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdrop"));
        cmd.current_dir(self.dir.path());
        // Keep the hub cache inside the sandbox so tests never touch the user's cache or the network.
        cmd.env("HF_HOME", self.dir.path().join("hf-home"));
        cmd.env("HF_HUB_OFFLINE", "1");
        cmd.env("NO_COLOR", "1");
        Rdrop { cmd, stdin: None }
    }
}

/// Builder for one `rdrop` run.
pub struct Rdrop {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Rdrop {
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, val: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, val);
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Runs to completion and returns the raw output.
    pub fn output(mut self) -> Output {
        self.cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        self.cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = self.cmd.spawn().expect("spawn rdrop");
        if let Some(input) = self.stdin.take() {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            // Ignore write errors: a command that exits early closes its stdin.
            let _ = pipe.write_all(&input);
        }
        child.wait_with_output().expect("wait for rdrop")
    }

    /// Starts it in the background with stdout discarded and stderr written to `log` (a pipe that
    /// nobody reads could fill up and stall a long run).
    pub fn spawn(mut self, log: &Path) -> std::process::Child {
        let log = std::fs::File::create(log).expect("create log file");
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.cmd.spawn().expect("spawn rdrop")
    }

    /// Runs, asserts success, returns stdout as UTF-8.
    pub fn ok(self) -> String {
        let out = self.output();
        assert!(
            out.status.success(),
            "rdrop failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Runs, asserts failure, returns stderr.
    pub fn fails(self) -> String {
        let out = self.output();
        assert!(
            !out.status.success(),
            "rdrop unexpectedly succeeded:\nstdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A tiny corpus (`data/train.*`, `data/valid.*`) and a recipe for a seconds-long run.
pub fn tiny_run(sb: &Sandbox, extra: &str) -> PathBuf {
    for (name, pairs) in rdrop_train::synthetic::generate(
        9,
        rdrop_train::synthetic::Sizes {
            train: 120,
            valid: 8,
            test: 1,
        },
    ) {
        let de: String = pairs.iter().map(|p| format!("{}\n", p.0)).collect();
        let en: String = pairs.iter().map(|p| format!("{}\n", p.1)).collect();
        sb.write(&format!("data/{name}.de"), de);
        sb.write(&format!("data/{name}.en"), en);
    }
    sb.write(
        "tiny.toml",
        format!(
            r#"output_dir = "run"
[model.arch]
d_model = 16
encoder_layers = 1
decoder_layers = 1
heads = 2
ffn_dim = 32
max_positions = 64
[tokenizer]
vocab_size = 120
[data]
train = {{ source = "data/train.de", target = "data/train.en" }}
valid = {{ source = "data/valid.de", target = "data/valid.en" }}
max_len = 60
[batching]
max_tokens = 400
[training]
max_updates = 6
max_epochs = 0
log_every = 2
[validation]
every_updates = 0
every_epoch = false
metrics = ["loss"]
[checkpoint]
every_updates = 2
keep_last = 0
{extra}"#
        ),
    )
}

/// `../shared` beside the checkout (data for tests), or `None` on a machine without it.
pub fn shared_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    p.is_dir().then_some(p)
}

/// Committed fixtures under `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The files `rdrop convert` writes for an opus-mt style model.
pub const MODEL_FILES: [&str; 7] = [
    "config.json",
    "model.safetensors",
    "source.spm",
    "target.spm",
    "vocab.json",
    "tokenizer_config.json",
    "generation_config.json",
];
