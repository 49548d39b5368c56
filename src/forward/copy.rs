//! User-space forwarding: read into a buffer, write it out.
//!
//! A direction holds its buffer only while data is in flight: it is allocated when the source
//! becomes readable and freed once the source is drained, so an idle session costs no buffer.

use std::io;

use super::{ForwardError, Leg, Meter};

/// Forwards one direction until the source's EOF; returns the bytes moved.
pub(super) async fn forward(
    leg: Leg<'_>,
    buffer_size: usize,
    meter: &impl Meter,
) -> Result<u64, ForwardError> {
    let mut total = 0u64;
    loop {
        leg.source_readable().await?;
        let mut buffer = Vec::with_capacity(buffer_size);
        // Read and write until the source would block; then give the buffer back and wait.
        loop {
            buffer.clear();
            match leg.source.try_read_buf(&mut buffer) {
                Ok(0) => {
                    leg.finish()?;
                    return Ok(total);
                }
                Ok(read) => {
                    super::write_all(leg.sink, &buffer[..read])
                        .await
                        .map_err(|error| leg.sink_error(error))?;
                    total += read as u64;
                    meter.record(leg.direction, read as u64);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(leg.source_error(error)),
            }
        }
    }
}
