//! `--load-in-4bit`: loading a base model's projections in bitsandbytes' 4-bit format (QLoRA),
//! for the commands that load a model without a run config.

use ember_model::bnb::{FourBitConfig, QuantType};

#[derive(clap::Args, Debug, Clone)]
pub struct FourBitArgs {
    /// QLoRA: hold the base projections in bitsandbytes' 4-bit format (double quantization,
    /// the LM head kept), as `[model] load_in_4bit` does; the way to use an adapter trained so.
    #[arg(long)]
    pub load_in_4bit: bool,
    /// With --load-in-4bit: nf4 or fp4.
    #[arg(long, default_value = "nf4", requires = "load_in_4bit", value_parser = parse_quant_type)]
    pub bnb_4bit_quant_type: QuantType,
}

impl FourBitArgs {
    pub fn config(&self) -> Option<FourBitConfig> {
        self.load_in_4bit.then(|| FourBitConfig {
            quant_type: self.bnb_4bit_quant_type,
            ..FourBitConfig::default()
        })
    }
}

fn parse_quant_type(text: &str) -> Result<QuantType, String> {
    text.parse()
}
