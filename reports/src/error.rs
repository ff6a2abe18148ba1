//! What can go wrong rendering a report, worded for the person who ran `clusterbench report`.

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("results.json: the file is not a JSON object (is this a clusterbench results file?)")]
    NotAnObject,
    #[error("results.json: schema_version is missing (is this a clusterbench results file?)")]
    NoSchemaVersion,
    #[error(
        "results.json: schema_version {found} is not supported (this clusterbench reads {supported})"
    )]
    UnsupportedSchema { found: String, supported: u64 },
    #[error("results.json: {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("no runs to report: give at least one results.json")]
    NoRuns,
    /// One of several runs given to [`crate::render_runs`] was unreadable; `run` counts from 1.
    #[error("run {run} of {runs}: {source}")]
    InRun {
        run: usize,
        runs: usize,
        source: Box<ReportError>,
    },
    #[error("sweep.json: the file is not a JSON object (is this a clusterbench sweep.json?)")]
    SweepNotAnObject,
    #[error("sweep.json: schema_version is missing (is this a clusterbench sweep.json?)")]
    SweepNoSchemaVersion,
    #[error(
        "sweep.json: schema_version {found} is not supported (this clusterbench reads {supported})"
    )]
    SweepUnsupportedSchema { found: String, supported: u64 },
    /// `found` is the JSON of the `kind` key, or `missing`.
    #[error("sweep.json: kind is {found}, not \"sweep\" (is this a clusterbench sweep.json?)")]
    NotASweep { found: String },
    #[error("sweep.json: {path}: {message}")]
    SweepInvalid { path: String, message: String },
    #[error(
        "sweep.json lists {listed} run(s) but {given} results file(s) were given: give one per run, in its order"
    )]
    SweepRunCount { listed: usize, given: usize },
    /// One run of a sweep was unreadable; `run` counts from 1.
    #[error("sweep run {run} of {runs} ({dir}): {source}")]
    InSweepRun {
        run: usize,
        runs: usize,
        dir: String,
        source: Box<ReportError>,
    },
    #[error("no {side} runs to compare: give at least one results.json for each side")]
    CompareNoRuns { side: &'static str },
    #[error("{given} {side} runs given: compare at most {max} per side")]
    CompareTooManyRuns {
        side: &'static str,
        given: usize,
        max: usize,
    },
    /// One run of a comparison was unreadable; `side` is `baseline` or `candidate`, `run`
    /// counts from 1.
    #[error("{side} run {run} of {runs}: {source}")]
    InCompareRun {
        side: &'static str,
        run: usize,
        runs: usize,
        source: Box<ReportError>,
    },
    #[error("no results to make a history of: give one results.json or directory per commit")]
    HistoryEmpty,
    #[error("{given} commits given: a history has at most {max}; give the most recent ones")]
    HistoryTooManyCommits { given: usize, max: usize },
    #[error("{label} (commit {commit} of {commits}) holds no runs")]
    HistoryCommitEmpty {
        label: String,
        commit: usize,
        commits: usize,
    },
    #[error("{given} runs given in all: a history reads at most {max}")]
    HistoryTooManyRuns { given: usize, max: usize },
    /// One run of a history was unreadable; `commit` and `run` count from 1.
    #[error("{label} (commit {commit} of {commits}), run {run} of {runs}: {source}")]
    InHistoryRun {
        label: String,
        commit: usize,
        commits: usize,
        run: usize,
        runs: usize,
        source: Box<ReportError>,
    },
    /// The gate's thresholds are unusable (negative, not a number, confidence outside (0, 1)).
    #[error("gate: {0}")]
    Gate(String),
    #[error("drawing the {chart} chart failed: {message}")]
    Chart {
        chart: &'static str,
        message: String,
    },
    /// A bug in this crate's templates or context, not in the input.
    #[error("rendering the report template failed: {0}")]
    Template(String),
}
