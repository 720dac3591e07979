import Foundation
import TensorCore

/// Writes a Hugging Face layout directory (config.json + model.safetensors + extra files) atomically.
public enum HFExport {
    /// Every float tensor a dense checkpoint of `config` holds, in a stable order.
    public static func tensorNames(_ c: LlamaConfig) -> [String] {
        var n = ["model.embed_tokens.weight"]
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            n += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            for rel in LlamaBlock.linearNames {
                n.append(p + rel + ".weight")
                if c.hasQKVBias && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(rel) { n.append(p + rel + ".bias") }
                if c.hasOBias && rel == "self_attn.o_proj" { n.append(p + rel + ".bias") }
            }
        }
        n.append("model.norm.weight")
        if !c.tieWordEmbeddings { n.append("lm_head.weight") }
        return n
    }

    /// `dtype` converts the matrices (2-D tensors); norms and biases stay F32.
    public static func write(config: LlamaConfig, source: WeightSource, dtype: DType? = nil, to dir: String,
                             copyFiles: [(from: String, name: String)] = []) throws {
        var cfg = config
        if let d = dtype { cfg.torchDtype = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][d.rawValue] }
        var tensors: [(String, Tensor)] = []
        for name in tensorNames(config) {
            let t = try source.tensor(name)
            tensors.append((name, t.shape.count == 2 ? t.converted(to: dtype ?? t.dtype) : t.converted(to: .f32)))
        }
        try AtomicFile.writeDirectory(to: dir) { tmp in
            try cfg.jsonData().write(to: URL(fileURLWithPath: tmp + "/config.json"))
            try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: tmp + "/model.safetensors")
            for f in copyFiles {
                try FileManager.default.copyItem(atPath: f.from, toPath: (tmp as NSString).appendingPathComponent(f.name))
            }
        }
    }
}
