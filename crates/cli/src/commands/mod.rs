pub mod generate;
pub mod inspect;
