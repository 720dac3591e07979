import ArgumentParser
import Foundation
import TensorCore

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show a checkpoint's tensors or a tokenizer's type.")
    @Argument(help: "A .safetensors file, a checkpoint directory, a llama2.c .bin or a tokenizer file.")
    var path: String

    func run() throws {
        try runReportingErrors {
            let ckpt = try SafetensorsCheckpoint(path: path)
            var params = 0, bytes = 0
            for name in ckpt.names {
                let info = ckpt.info(name)!
                params += info.shape.reduce(1, *)
                bytes += info.dataRange.count
                print("\(name)  \(info.dtype.rawValue)  \(info.shape)")
            }
            print("tensors: \(ckpt.names.count)  parameters: \(params)  bytes: \(bytes)")
        }
    }
}

/// Prints an error as one line on stderr and exits 1, instead of a stack trace.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch {
        FileHandle.standardError.write("error: \(error)\n".data(using: .utf8)!)
        throw ExitCode(1)
    }
}
