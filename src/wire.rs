//! `smsmesh.v1.Jobs`, with a hand-written protobuf encoding (the generated
//! code in [`crate::pb`] uses this type for it): the coordinator writes each job's fields straight into the
//! frame's bytes as it takes the job, with no `Job` value, no `String` per
//! field and no second pass to size the frame. On the wire it is the
//! generated message's exact encoding; decoded, its jobs are in `jobs`.
//!
//! Also [`packed`], which packs the member frames of a group stream.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::pb;

/// The jobs of one frame (see the module doc).
#[derive(Clone, PartialEq, Default)]
pub struct Jobs {
    /// Jobs as decoded, or pushed as values to be encoded.
    pub jobs: Vec<pb::Job>,
    /// More jobs, already encoded as entries of field 1 (`push_encoded`).
    encoded: Vec<u8>,
    /// How many jobs `encoded` holds.
    encoded_count: usize,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("jobs", &self.jobs)
            .field("encoded_jobs", &self.encoded_count)
            .finish()
    }
}

/// One job's fields, borrowed, for [`Jobs::push_encoded`].
pub struct JobRef<'a> {
    /// `Job.batch`.
    pub batch: u64,
    /// `Job.index`.
    pub index: u32,
    /// `Job.attempt`.
    pub attempt: u32,
    /// `Job.to`.
    pub to: &'a str,
    /// `Job.body`.
    pub body: &'a str,
    /// `Job.traceparent` (empty: not traced).
    pub traceparent: &'a str,
    /// `Job.sender` (empty: the gateway's default).
    pub sender: &'a str,
    /// `Job.priority` (0: not given).
    pub priority: u32,
}

impl Jobs {
    /// Jobs for one frame, with room for about `n` encoded ones.
    pub fn with_capacity(n: usize) -> Self {
        Jobs {
            jobs: Vec::new(),
            encoded: Vec::with_capacity(n * 160),
            encoded_count: 0,
        }
    }

    /// How many jobs the frame carries.
    pub fn len(&self) -> usize {
        self.jobs.len() + self.encoded_count
    }

    /// Whether the frame carries no job.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one job, encoded at once.
    pub fn push_encoded(&mut self, job: &JobRef<'_>) {
        let s = |tag: u32, v: &str| {
            if v.is_empty() {
                0
            } else {
                encoding::key_len(tag) + encoding::encoded_len_varint(v.len() as u64) + v.len()
            }
        };
        let len = 1
            + 8
            + if job.index == 0 {
                0
            } else {
                1 + encoding::encoded_len_varint(u64::from(job.index))
            }
            + if job.attempt == 0 {
                0
            } else {
                1 + encoding::encoded_len_varint(u64::from(job.attempt))
            }
            + s(4, job.to)
            + s(5, job.body)
            + s(6, job.traceparent)
            + s(7, job.sender)
            + if job.priority == 0 {
                0
            } else {
                1 + encoding::encoded_len_varint(u64::from(job.priority))
            };
        let buf = &mut self.encoded;
        encoding::encode_key(1, WireType::LengthDelimited, buf);
        encoding::encode_varint(len as u64, buf);
        encoding::encode_key(1, WireType::SixtyFourBit, buf);
        buf.put_u64_le(job.batch);
        if job.index != 0 {
            encoding::encode_key(2, WireType::Varint, buf);
            encoding::encode_varint(u64::from(job.index), buf);
        }
        if job.attempt != 0 {
            encoding::encode_key(3, WireType::Varint, buf);
            encoding::encode_varint(u64::from(job.attempt), buf);
        }
        for (tag, v) in [
            (4, job.to),
            (5, job.body),
            (6, job.traceparent),
            (7, job.sender),
        ] {
            if !v.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, buf);
                encoding::encode_varint(v.len() as u64, buf);
                buf.put_slice(v.as_bytes());
            }
        }
        if job.priority != 0 {
            encoding::encode_key(8, WireType::Varint, buf);
            encoding::encode_varint(u64::from(job.priority), buf);
        }
        self.encoded_count += 1;
    }
}

impl prost::Message for Jobs {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for job in &self.jobs {
            encoding::message::encode(1, job, buf);
        }
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == 1 {
            encoding::message::merge_repeated(wire_type, &mut self.jobs, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(1, &self.jobs) + self.encoded.len()
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.encoded.clear();
        self.encoded_count = 0;
    }
}

/// Most member frames in one group frame.
pub const MEMBER_FRAMES_PER_GROUP_FRAME: usize = 64;

/// About the most bytes of member frames in one group frame: a member frame
/// that alone is larger goes alone.
pub const GROUP_FRAME_BYTES: usize = 4 << 20;

/// A queue [`packed`] drains: tokio's bounded or unbounded receiver.
pub trait FrameQueue<T> {
    /// The next frame, as `poll_recv` gives it.
    fn poll_frame(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>>;
}

impl<T> FrameQueue<T> for tokio::sync::mpsc::UnboundedReceiver<T> {
    fn poll_frame(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.poll_recv(cx)
    }
}

impl<T> FrameQueue<T> for tokio::sync::mpsc::Receiver<T> {
    fn poll_frame(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.poll_recv(cx)
    }
}

/// The frames queued in `rx`, packed by `pack` into group frames: whatever is
/// queued when the stream asks for its next frame, up to
/// [`MEMBER_FRAMES_PER_GROUP_FRAME`] frames and about [`GROUP_FRAME_BYTES`].
/// Ends when every sender is gone and the queue is empty.
pub fn packed<T: prost::Message, G>(
    mut rx: impl FrameQueue<T>,
    mut pack: impl FnMut(Vec<T>) -> G,
) -> impl futures::Stream<Item = G> {
    // A frame that did not fit the last group opens the next one.
    let mut carried: Option<T> = None;
    futures::stream::poll_fn(move |cx| {
        let mut frames = Vec::new();
        let mut bytes = 0;
        if let Some(first) = carried.take() {
            bytes += first.encoded_len();
            frames.push(first);
        }
        while frames.len() < MEMBER_FRAMES_PER_GROUP_FRAME {
            match rx.poll_frame(cx) {
                std::task::Poll::Ready(Some(frame)) => {
                    let len = frame.encoded_len();
                    if !frames.is_empty() && bytes + len > GROUP_FRAME_BYTES {
                        carried = Some(frame);
                        break;
                    }
                    bytes += len;
                    frames.push(frame);
                }
                std::task::Poll::Ready(None) if frames.is_empty() => {
                    return std::task::Poll::Ready(None);
                }
                std::task::Poll::Ready(None) | std::task::Poll::Pending => break,
            }
        }
        if frames.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Some(pack(frames)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The generated encoding of the same jobs, for comparison.
    #[derive(Clone, PartialEq, prost::Message)]
    struct GeneratedJobs {
        #[prost(message, repeated, tag = "1")]
        jobs: Vec<pb::Job>,
    }

    fn job(i: u32) -> pb::Job {
        pb::Job {
            batch: 0xdead_beef_0000_0000 + u64::from(i),
            index: i * 300,
            attempt: i % 3,
            to: if i == 2 {
                String::new()
            } else {
                format!("+1555{i:07}")
            },
            body: "é".repeat(i as usize * 70),
            traceparent: if i == 1 {
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()
            } else {
                String::new()
            },
            sender: if i.is_multiple_of(2) {
                "ACME".into()
            } else {
                String::new()
            },
            priority: i % 5,
        }
    }

    #[test]
    fn encoded_jobs_are_byte_for_byte_the_generated_encoding() {
        let all: Vec<pb::Job> = (0..5).map(job).collect();
        let mut ours = Jobs::with_capacity(2);
        ours.jobs = all[..2].to_vec();
        for j in &all[2..] {
            ours.push_encoded(&JobRef {
                batch: j.batch,
                index: j.index,
                attempt: j.attempt,
                to: &j.to,
                body: &j.body,
                traceparent: &j.traceparent,
                sender: &j.sender,
                priority: j.priority,
            });
        }
        assert_eq!(ours.len(), 5);
        let expected = GeneratedJobs { jobs: all.clone() }.encode_to_vec();
        assert_eq!(ours.encoded_len(), expected.len());
        assert_eq!(ours.encode_to_vec(), expected);
        let decoded = Jobs::decode(expected.as_slice()).unwrap();
        assert_eq!(decoded.jobs, all);
        assert_eq!(decoded.len(), 5);
    }

    #[tokio::test]
    async fn group_frames_are_bounded_by_count_and_by_bytes() {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::Job>();
        let mut groups = Box::pin(packed(rx, |frames| frames));
        let small = |i: u32| pb::Job {
            index: i,
            ..Default::default()
        };
        // 100 small frames queued: 64, then 36.
        for i in 0..100 {
            tx.send(small(i)).unwrap();
        }
        assert_eq!(groups.next().await.unwrap().len(), 64);
        assert_eq!(groups.next().await.unwrap().len(), 36);
        // Frames of 1.5 MiB: two to a group (not three, 4.5 MiB), in order.
        let big = |i: u32| pb::Job {
            index: i,
            body: "x".repeat(3 << 19),
            ..Default::default()
        };
        for i in 0..5 {
            tx.send(big(i)).unwrap();
        }
        // One larger than the limit goes alone.
        tx.send(pb::Job {
            index: 5,
            body: "y".repeat(5 << 20),
            ..Default::default()
        })
        .unwrap();
        tx.send(small(6)).unwrap();
        drop(tx);
        let mut sizes = Vec::new();
        let mut order = Vec::new();
        while let Some(g) = groups.next().await {
            sizes.push(g.len());
            order.extend(g.iter().map(|j| j.index));
        }
        assert_eq!(sizes, [2, 2, 1, 1, 1]);
        assert_eq!(order, [0, 1, 2, 3, 4, 5, 6]);
    }
}
