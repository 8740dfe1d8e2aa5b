//! CUDA graphs: a stream's launches captured once and replayed with one call. Decoding steps
//! repeat their launches token after token (positions and sequences are read from the device,
//! so a step's launches depend only on how many tokens it has), and replaying them saves the
//! host's time per launch, most of a small model's step.

use std::ptr::null_mut;

use cudarc::driver::sys;

use crate::error::Result;

pub struct Graph {
    exec: sys::CUgraphExec,
}

impl Graph {
    /// Captures what `queue` puts on `stream` (none of it runs) into a graph ready to launch.
    pub fn capture(stream: sys::CUstream, queue: impl FnOnce() -> Result<()>) -> Result<Self> {
        // Relaxed: burn's own thread may allocate meanwhile.
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        unsafe { sys::cuStreamBeginCapture_v2(stream, mode).result()? };
        let queued = queue();
        let mut graph: sys::CUgraph = null_mut();
        // Ends the capture whatever happened inside it, so the stream works again.
        let ended = unsafe { sys::cuStreamEndCapture(stream, &mut graph).result() };
        let instantiated = queued.and(ended.map_err(Into::into)).and_then(|()| {
            let mut exec: sys::CUgraphExec = null_mut();
            unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0).result()? };
            Ok(Self { exec })
        });
        if !graph.is_null() {
            unsafe {
                let _ = sys::cuGraphDestroy(graph);
            }
        }
        instantiated
    }

    pub fn launch(&self, stream: sys::CUstream) -> Result<()> {
        unsafe { sys::cuGraphLaunch(self.exec, stream).result()? };
        Ok(())
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        unsafe {
            let _ = sys::cuGraphExecDestroy(self.exec);
        }
    }
}
