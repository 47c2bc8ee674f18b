//! What a call costs beyond its kernels, and the driver primitives it is made of: the suite's
//! call-overhead tables alone (`ironflash_cli::bench::overhead`, whose doc says what is measured).
//!
//! ```text
//! cargo run --release --example call_overhead
//! ```

mod common;

use ironflash_cli::bench::overhead;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dev) = common::device_or_skip()? else { return Ok(()) };
    println!("device: {}", dev.info().name);
    let calls = overhead::call_rows(&dev)?;
    let primitives = overhead::driver_primitives(&dev)?;
    print!("{}", overhead::markdown(&calls, &primitives));
    Ok(())
}
