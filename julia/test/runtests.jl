# Tests of the Julia side of crossode's Julia backend. They need Julia 1.10/1.11 with this project's deps:
#
#     julia --project=julia -e 'using Pkg; Pkg.instantiate(); Pkg.test()'
#     CROSSODE_TEST_GROUPS=units,steps julia --project=julia -e 'using Pkg; Pkg.test()'   # some groups only
#
# (ForwardDiff is a test-only dependency, so run through Pkg.test, which builds the test environment.)
#
# Groups: units, fields, steps, statuses, vjp_auto, linear, mlp, vjp, noparams, backward, weights, batch, cnf,
# float32, nan_guard, training, known_limits. The gradient groups compile one adjoint per (solver, sensealg, field form, precision):
# the whole file takes tens of minutes on a first run.
#
# Most cases come from fixtures.jl, written by tests/backends/julia/julia_fixtures.py: the exact `build` keywords
# crossode's Python backend sends for every combination its `supports()` accepts, the independent reference of
# crossode's records (closed form or tight forward sensitivities), and what crossode's PyTorch backend does on the
# step-control and status cases. Accuracy is judged against two references:
#
# - `ref` (continuous): every gradient must be within 20x the error of the discretisation itself (plus 1e-7);
# - the discrete gradient of the same discretisation (ForwardDiff through the cell's own solve, no sensealg):
#   the discretise-then-optimise methods (Direct = ReverseDiffAdjoint, Forward = ForwardDiffSensitivity) must
#   equal it to 1e-7 (float32: 1e-4).

using Test
import ForwardDiff

include(joinpath(@__DIR__, "..", "src", "CrossODE.jl"))
using .CrossODE
include(joinpath(@__DIR__, "fixtures.jl"))

const GROUPS = let g = get(ENV, "CROSSODE_TEST_GROUPS", "all")
    g == "all" ? nothing : Set(strip.(split(g, ",")))
end
want(group) = GROUPS === nothing || group in GROUPS

"""crossode.relative_error: ||a - b|| / ||b|| (0 for two empty vectors)."""
relerr(a, b) = isempty(b) ? 0.0 : sqrt(sum(abs2, a .- b)) / max(sqrt(sum(abs2, b)), 1.0e-300)

loss_of(Y, ::Nothing) = sum(abs2, Y) / 2
loss_of(Y, W) = sum(W .* Y)
loss_of(Y, D::CrossODE.Targets) = sum(abs2, Y .- D.data) / 2
function loss_of(Y, C::CrossODE.CNFNLL)  # -mean_b log p_x(x_b) = mean_b (-log N(z_b) + logp_b(t1)), last save
    d, y = C.dims, Y[:, end]
    return sum(d / 2 * log(2pi) + sum(abs2, y[(b - 1) * (d + 1) .+ (1:d)]) / 2 + y[b * (d + 1)]
               for b in 1:C.batch) / C.batch
end
on_host(::Nothing) = nothing
on_host(C::CrossODE.CNFNLL) = C
on_host(W) = Matrix{Float64}(W)
on_host(D::CrossODE.Targets) = CrossODE.Targets(Matrix{Float64}(D.data))

# World age: the generated fields are defined at run time (inside this file's single top-level @testset), so
# code that calls them directly (a `solve`, a field evaluation) enters through `Base.invokelatest`, as CrossODE's
# own `build`, `gradient_cell` and `solve_cell` do.

"""
The discrete gradient of a cell's own discretisation: ForwardDiff through `solve` with the cell's keywords and
`primal_norm` (dual numbers take the primal's steps), no sensealg. Implicit solvers use ForwardDiff Jacobians
(the Newton iterations converge to the same discrete solution as with `AutoFiniteDiff`).
"""
function discrete_reference(cell, case)
    prob, W = cell.prob, cell.weights
    alg = CrossODE.make_alg(case.build.alg)
    kw = merge(cell.kwargs, (; internalnorm = CrossODE.primal_norm))
    n = length(prob.u0)
    nullp = prob.p isa CrossODE.SciMLBase.NullParameters
    f = x -> begin
        sol = CrossODE.solve(prob, alg; u0 = x[1:n], p = nullp ? prob.p : x[(n + 1):end], kw...)
        loss_of(Array(sol), W)
    end
    x0 = nullp ? collect(prob.u0) : vcat(prob.u0, prob.p)
    g = ForwardDiff.gradient(f, x0)
    return (loss = Float64(f(x0)), du0 = Float64.(g[1:n]), dp = Float64.(g[(n + 1):end]))
end

"""A generated field at one point: its element type, NaN pattern, values, and derivatives through its NaN guards."""
function check_field(fns, case)
    T = case.dtype == "float32" ? Float32 : Float64
    u, p, t = T.(case.u), T.(case.p), T(case.t)
    f = fns.oop(u, p, t)  # NaNMath: NaN outside the domain, never a DomainError
    @test f isa Vector{T}  # float32 constants are Float32 literals: no promotion to Float64
    du = zeros(T, length(u))
    fns.iip(du, u, p, t)
    @test isequal(du, f)
    @test isnan.(f) == isnan.(case.f)
    ok = .!isnan.(case.f)
    @test f[ok] ≈ case.f[ok] rtol = (T == Float32 ? 1.0e-5 : 1.0e-12)
    J = ForwardDiff.jacobian(v -> fns.oop(v, p, t), u)  # dual numbers through the NaN guards
    @test eltype(J) == T
    if all(ok)
        g = CrossODE.Zygote.gradient(v -> sum(fns.oop(v, p, t)), u)[1]  # ChainRules' NaNMath rules
        @test g ≈ vec(sum(J; dims = 1)) rtol = (T == Float32 ? 1.0e-4 : 1.0e-10)
    end
    return nothing
end

@testset "CrossODE" begin
    if want("units")
        @testset "units" begin
            @testset "MLP layout: row-major W from Julia's column-major reshape" begin
                p = collect(1.0:6.0)
                # crossode flattens W (out = 3, in = 2) row-major: W = [1 2; 3 4; 5 6]
                @test transpose(reshape(p[1:6], 2, 3)) == [1.0 2.0; 3.0 4.0; 5.0 6.0]
            end

            @testset "status_of" begin
                @test status_of(CrossODE.ReturnCode.Success) == "ok"
                @test status_of(CrossODE.ReturnCode.Terminated) == "ok"
                @test status_of(CrossODE.ReturnCode.MaxIters) == "max_steps"
                @test status_of(CrossODE.ReturnCode.DtLessThanMin) == "step_size_too_small"
                @test status_of(CrossODE.ReturnCode.Unstable) == "diverged"
                @test status_of(CrossODE.ReturnCode.DtNaN) == "diverged"
                @test status_of(CrossODE.ReturnCode.ConvergenceFailure) == "solver_error"
                @test CrossODE.retcode_name(CrossODE.ReturnCode.MaxIters) == "MaxIters"
            end

            @testset "algorithms: finite-difference Jacobians on request (Direct + implicit)" begin
                for name in ("ImplicitEuler", "Kvaerno5")
                    @test CrossODE.SciMLBase.forwarddiffs_model(make_alg(name)) == true
                    @test CrossODE.SciMLBase.forwarddiffs_model(make_alg(name, "finite")) == false
                end
                @test_throws ArgumentError make_alg("Tsit5", "finite")
                @test_throws ArgumentError make_alg("Kvaerno5", "symbolic")
            end

            @testset "VJP names" begin
                @test vjp_name(make_vjp("zygote")) == "zygote"
                @test vjp_name(make_vjp("enzyme")) == "enzyme"
                @test vjp_name(make_vjp("reversediff")) == "reversediff"
                @test vjp_name(make_vjp("auto")) == "auto"
                @test vjp_name(false) == "jacobian"
            end

            @testset "controller limits are crossode's" begin
                b = CrossODEController().basic
                @test (b.qmin, b.qmax, b.qmax_first_step, b.gamma, b.failfactor) == (0.2, 10.0, 10.0, 0.9, 5.0)
            end

            @testset "primal_norm strips partials; on floats it is the RMS norm" begin
                u = [3.0, 4.0]
                @test primal_norm(u, 0.0) ≈ sqrt(12.5)
                d = ForwardDiff.Dual.(u, [100.0, -7.0])
                @test primal_norm(d, 0.0) == primal_norm(u, 0.0)
                @test primal_norm(Float64[], 0.0) == 0.0
                @test primal_norm(ForwardDiff.Dual(-2.0, 5.0), 0.0) == 2.0
            end

            @testset "nonfinite_state" begin
                @test !nonfinite_state([1.0, 2.0], nothing, 0.0)
                @test nonfinite_state([1.0, NaN], nothing, 0.0)
                @test nonfinite_state([Inf, 2.0], nothing, 0.0)
            end

            @testset "build with its documented defaults" begin
                src = first(c for c in GRADIENT_CASES if c.problem == "linear" && c.dtype == "float64").build.src
                cell = build(; src, iip = true, u0 = [1.0, 0.5], p = [-0.5, 1.0, -1.0, -0.3], t0 = 0.0, t1 = 1.0,
                    saveat = [0.5, 1.0], alg = "Tsit5", sensealg = "GaussAdjoint")
                @test cell_info(cell).solve_keywords == "adaptive,maxiters,save_end,save_start,saveat"
                @test cell.kwargs.save_start == false && cell.kwargs.save_end == true
                res = gradient_cell(cell)
                @test res.status == "ok" && all(isfinite, res.dp)
                @test solve_cell(cell).status == "ok"
            end

            @testset "errors name the valid choices" begin
                @test_throws ArgumentError make_alg("Dopri5")
                @test_throws ArgumentError make_vjp("tracker")
                @test_throws ArgumentError make_sensealg("MALI")
                c = first(c for c in GRADIENT_CASES if c.step == "fixed")
                @test_throws ArgumentError build(; merge(c.build, (; controller = "PI"))...)
                @test_throws ArgumentError build(; merge(c.build, (; dt = nothing))...)
                @test_throws ArgumentError build(; merge(c.build, (; null_parameters = true))...)
            end
        end
    end

    if want("fields")
        @testset "generated field $(case.name) at u = $(case.u)" for case in FIELD_CASES
            Base.invokelatest(check_field, load_rhs(case.src), case)
        end
    end

    if want("steps")
        # CrossODEController + tstops = saveat + the same first step: the PyTorch backend's accepted/rejected steps
        @testset "steps as crossode's PyTorch backend: $(case.name)" for case in STEP_CASES
            cell = build(; case.build...)
            s = solve_cell(cell)
            @test s.status == "ok"
            @test (s.naccept, s.nreject) == (case.naccept, case.nreject)
            g = gradient_cell(cell)  # ReverseDiffAdjoint: the tracked solve takes the same steps
            @test (g.naccept, g.nreject) == (case.naccept, case.nreject)
            # every save time is the end of a step (no interpolation)
            T = eltype(cell.kwargs.saveat)
            sol = Base.invokelatest(CrossODE.solve, cell.prob, cell.alg;
                merge(cell.kwargs, (; saveat = T[], save_everystep = true))...)
            @test all(s -> s in sol.t, cell.kwargs.saveat)
            h = diff(sol.t)
            @test all(>(0), h)
        end
    end

    if want("statuses")
        @testset "status as crossode's PyTorch backend: $(case.name)" for case in STATUS_CASES
            cell = build(; case.build...)
            res = gradient_cell(cell)
            @test res.status == case.status
            @test all(iszero, res.dp) && all(iszero, res.du0)
            @test solve_cell(cell).status == case.status
        end
    end

    if want("vjp_auto")
        @testset "vjp = \"auto\" is resolved once, at build time" begin
            for group in ("linear", "mlp")
                case = first(c for c in GRADIENT_CASES if c.group == group && c.solver == "tsit5" &&
                    c.sensitivity == "gauss" && c.step == "adaptive")
                cell = build(; case.build...)
                @test cell.vjp != "auto" && cell.sensealg.autojacvec !== nothing
                group == "mlp" && @test cell.vjp == "zygote"  # out-of-place: sensitivity_interface.jl's choice
                r1, r2 = gradient_cell(cell), gradient_cell(cell)
                @test r1.calls_backward == r2.calls_backward  # nothing is probed inside the gradient
                if cell.vjp in ("zygote", "enzyme", "reversediff")
                    explicit = build(; merge(case.build, (; vjp = cell.vjp))...)
                    if repr(explicit.sensealg) == repr(cell.sensealg)
                        r3 = gradient_cell(explicit)
                        @test r3.dp == r1.dp && r3.du0 == r1.du0
                        @test r3.calls_backward == r1.calls_backward
                    end
                end
            end
        end
    end

    gradient_groups = ("linear", "mlp", "vjp", "noparams", "backward", "weights", "batch", "cnf", "float32",
        "nan_guard")
    cases = [c for c in GRADIENT_CASES if c.group in gradient_groups && want(c.group)]
    @testset "gradient $(case.name)" for case in cases
        cell = build(; case.build...)
        info = cell_info(cell)
        @test info.solve_keywords == case.solve_keywords  # Python's JuliaCall.solve_keywords()
        @test info.problem_keywords == case.problem_keywords
        case.family == "otd" && @test cell.vjp != "auto"
        case.sensitivity == "direct" && case.solver in ("implicit_euler", "kvaerno5") &&
            @test CrossODE.SciMLBase.forwarddiffs_model(cell.alg) == false
        f32 = case.dtype == "float32"
        f32 && @test cell.prob.u0 isa Vector{Float32}
        res = gradient_cell(cell)
        @test res.status == "ok"
        if res.status == "ok"
            ref, disc = case.ref, Base.invokelatest(discrete_reference, cell, case)
            grad, dgrad, rgrad = vcat(res.dp, res.du0), vcat(disc.dp, disc.du0), vcat(ref.dp, ref.du0)
            scale = relerr(dgrad, rgrad)  # the error of the discretisation itself
            @test relerr(grad, rgrad) <= 20 * scale + 1.0e-7 + (f32 ? 1.0e-4 : 0.0)
            if case.family == "dto"
                @test relerr(grad, dgrad) <= (f32 ? 1.0e-4 : 1.0e-7)
            end
            @test res.loss ≈ disc.loss rtol = (f32 ? 1.0e-5 : 1.0e-9)
            @test length(res.dp) == length(ref.dp) && length(res.du0) == length(ref.du0)
            @test res.nf > 0 && res.calls_forward > 0 && res.calls_backward >= 0
            s = solve_cell(cell)
            @test s.status == "ok"
            @test size(s.ys) == (length(ref.du0), length(case.build.saveat))
            W = on_host(cell.weights)
            @test loss_of(s.ys, W) ≈ res.loss rtol = (f32 ? 1.0e-5 : 1.0e-9)
        end
    end

    if want("training")
        # CrossODE.make_training / train_step! (crossode/backends/julia/_train.py): Optimisers.jl's Adam against
        # Adam written out here, on the gradients of the cell's own gradient path at the hand-computed parameters
        @testset "training: Optimisers.Adam steps equal a hand-computed Adam sequence" begin
            case = first(c for c in GRADIENT_CASES if c.group == "linear" && c.step == "fixed" &&
                c.sensitivity == "direct" && c.build.alg == "RK4" && c.dtype == "float64")
            cell = build(; case.build...)
            lr, b1, b2, eps = 0.05, 0.9, 0.999, 1.0e-8
            tr = make_training(cell; lr, b1, b2, eps)
            p0 = training_params(tr)
            @test p0 == Vector{Float64}(cell.prob.p)
            p, m, v = copy(p0), zero(p0), zero(p0)
            for t in 1:4
                g = gradient_cell(cell, p)
                @test g.status == "ok"
                res = train_step!(tr)
                @test res.status == "ok" && res.updated
                @test res.loss ≈ g.loss rtol = 1.0e-10  # loss and gradient at the parameters before the update
                @test res.grad_norm ≈ sqrt(sum(abs2, g.dp)) rtol = 1.0e-10
                m = b1 .* m .+ (1 - b1) .* g.dp
                v = b2 .* v .+ (1 - b2) .* g.dp .^ 2
                p = p .- lr .* (m ./ (1 - b1^t)) ./ (sqrt.(v ./ (1 - b2^t)) .+ eps)  # eps outside the sqrt
                # round-off only: Optimisers.jl multiplies up b^t and orders the operations differently
                @test training_params(tr) ≈ p rtol = 1.0e-10 atol = 1.0e-14
                # first step: m_hat / sqrt(v_hat) = g / |g|, every parameter moves by lr against its gradient's sign
                t == 1 && @test p ≈ p0 .- lr .* g.dp ./ (abs.(g.dp) .+ eps) rtol = 1.0e-12
            end
            @test Vector{Float64}(cell.prob.p) == p0  # the cell's own parameters are never changed
            s = solve_cell(cell, p)
            @test s.status == "ok"
            @test loss_of(s.ys, on_host(cell.weights)) ≈ gradient_cell(cell, p).loss rtol = 1.0e-12
            @test_throws DimensionMismatch solve_cell(cell, p[1:(end - 1)])
        end

        @testset "training: a failed gradient is a status and leaves the parameters unchanged ($(case.name))" for
                case in filter(c -> !isempty(c.build.p), STATUS_CASES)
            cell = build(; case.build...)
            tr = make_training(cell; lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1.0e-8)
            res = train_step!(tr)
            @test res.status == case.status && !res.updated && isnan(res.grad_norm)
            @test training_params(tr) == Vector{Float64}(cell.prob.p)
        end
    end

    if want("known_limits")
        # Why supports() rejects InterpolatingAdjoint(checkpointing=true) with Fixed(dt): the checkpoint re-solves
        # pass only reltol/abstol (SciMLSensitivity src/interpolating_adjoint.jl). If this starts to pass (an
        # "Unexpected Pass"), SciMLSensitivity fixed it and the rejection can be lifted.
        @testset "checkpointed InterpolatingAdjoint with fixed steps ($alg)" for alg in ("Euler", "RK4")
            case = first(c for c in GRADIENT_CASES if c.group == "linear" && c.step == "fixed" &&
                c.sensitivity == "direct" && c.build.alg == alg)
            cell = build(; merge(case.build, (; sensealg = "InterpolatingAdjoint", checkpointing = true))...)
            res = try
                gradient_cell(cell)
            catch
                nothing
            end
            disc = Base.invokelatest(discrete_reference, cell, case)
            @test_broken res !== nothing && res.status == "ok" &&
                relerr(vcat(res.dp, res.du0), vcat(disc.dp, disc.du0)) < 1.0e-6
        end
    end
end
