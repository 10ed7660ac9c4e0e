//! `smsmesh.v1.Jobs`, with a hand-written protobuf encoding (the generated
//! code in [`crate::pb`] uses this type for it): the coordinator writes each job's fields straight into the
//! frame's bytes as it takes the job, with no `Job` value, no `String` per
//! field and no second pass to size the frame. On the wire it is the
//! generated message's exact encoding; decoded, its jobs are in `jobs`.

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
            + s(6, job.traceparent);
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
        for (tag, v) in [(4, job.to), (5, job.body), (6, job.traceparent)] {
            if !v.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, buf);
                encoding::encode_varint(v.len() as u64, buf);
                buf.put_slice(v.as_bytes());
            }
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
}
