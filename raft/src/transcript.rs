//! Transcript tests in the style of etcd's `datadriven`: a text file of commands, each followed
//! by `----` and the output it is expected to print. The caller supplies what a command does;
//! this module only reads, compares and (with `REWRITE=1`) rewrites the file. Used by the Raft
//! scenarios and by the cell's state-machine transcripts.
//!
//! ```text
//! # comment, kept on rewrite
//! command args
//! ----
//! output
//! ```

struct Block {
    comments: Vec<String>,
    command: String,
    expected: String,
}

fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().peekable();
    let mut comments = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with('#') || line.trim().is_empty() {
            if line.starts_with('#') {
                comments.push(line.to_string());
            }
            continue;
        }
        let command = line.to_string();
        let mut expected = String::new();
        if lines.peek() == Some(&"----") {
            lines.next();
            while let Some(l) = lines.peek() {
                if l.trim().is_empty() {
                    break;
                }
                expected.push_str(l);
                expected.push('\n');
                lines.next();
            }
        }
        blocks.push(Block { comments: std::mem::take(&mut comments), command, expected });
    }
    blocks
}

/// Runs the transcript at `path`, calling `run` for each command; `run` returns the output
/// (lines ending in `\n`). Panics with the expected and actual text at the first mismatch, or
/// rewrites the file when `REWRITE=1` is set (review the diff before committing it).
pub fn run_file(path: &str, mut run: impl FnMut(&str) -> String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rewrite = std::env::var("REWRITE").is_ok_and(|v| v == "1");
    let mut out_file = String::new();
    for b in parse(&text) {
        let actual = run(&b.command);
        for c in &b.comments {
            out_file.push_str(c);
            out_file.push('\n');
        }
        out_file.push_str(&format!("{}\n----\n{}\n", b.command, actual));
        if !rewrite && actual != b.expected {
            panic!("{path}: `{}`\n--- expected\n{}--- actual\n{}", b.command, b.expected, actual);
        }
    }
    if rewrite {
        std::fs::write(path, out_file).expect("rewrite");
    }
}
