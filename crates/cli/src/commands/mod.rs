pub mod convert;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod plot;
pub mod train;
