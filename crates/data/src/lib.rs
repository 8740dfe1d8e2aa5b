//! Instruction datasets: filled by the data-pipeline issue.
